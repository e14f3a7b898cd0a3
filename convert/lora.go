package convert

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
	"github.com/dllm-dev/dllm/tokenizer"
)

// A LoRA run trains r.ad (adapters, the mask token's row when it is new or
// spare, norms with --lora-train-norms) on a frozen base; full fine-tuning
// trains every parameter of r.m. The helpers below are what the optimizer,
// the checkpoints and the export see in either case.

func (r *run) lora() bool { return r.ad != nil }

func (r *run) trainGrads() kernels.Buf {
	if r.lora() {
		return r.ad.Grads
	}
	return r.m.Grads
}

// afterUpdate makes the model see the trained rows and norms.
func (r *run) afterUpdate() {
	if r.lora() {
		r.ad.CopyInto(r.m)
	}
}

// newOptimizer is AdamW over what the run trains.
func (r *run) newOptimizer() *AdamW {
	o := &r.opt
	set := modelSet(r.m)
	if r.lora() {
		ad := r.ad
		var specs []safetensors.Spec
		for _, s := range ad.Layout.Specs {
			shape := make([]int64, len(s.Shape))
			for i, d := range s.Shape {
				shape[i] = int64(d)
			}
			specs = append(specs, safetensors.Spec{Name: s.Name, Shape: shape})
		}
		set = trainSet{be: r.be, layout: ad.Layout, params: func() kernels.Buf { return ad.Params }, grads: func() kernels.Buf { return ad.Grads },
			specs: specs, fetch: func(buf kernels.Buf) safetensors.Fetch {
				return func(name string, dst []float32) error {
					v, ok := ad.Layout.View(buf, name)
					if !ok {
						return fmt.Errorf("no adapter tensor %q", name)
					}
					r.be.Download(dst, v)
					return r.be.Err()
				}
			}}
	}
	return newAdamW(set, o.Beta1, o.Beta2, o.Eps, o.WeightDecay, false)
}

// trainedRows are the embedding rows a LoRA run trains: the mask token's
// when it is new or a spare row (an existing token keeps its embedding).
func trainedRows(plan tokenizer.MaskPlan) []int {
	if plan.Kind == tokenizer.MaskNewRow || plan.Kind == tokenizer.MaskSpareRow {
		return []int{plan.ID}
	}
	return nil
}

// setupLoRA freezes the base and attaches a fresh adapter (A from the run's
// seed, B zero).
func (r *run) setupLoRA() error {
	ad, err := model.NewLoRA(r.m, r.opt.LoRA(trainedRows(r.plan)), r.opt.Seed)
	if err != nil {
		return err
	}
	r.ad = ad
	r.m.SetAdapter(ad)
	r.logf("LoRA: rank %d, alpha %g (scale %g), dropout %g on %s; %s trainable values of %s (%.3f%%)%s",
		ad.Cfg.Rank, ad.Cfg.Alpha, ad.Cfg.Scale(), ad.Cfg.Dropout, strings.Join(ad.Cfg.Targets, ","),
		fmtCount(int64(ad.Trainable())), fmtCount(int64(r.m.Layout.Values)), 100*float64(ad.Trainable())/float64(r.m.Layout.Values),
		map[bool]string{true: ", norms trained", false: ""}[ad.Cfg.TrainNorms])
	if r.m.HalfHeld() {
		r.logf("LoRA: the frozen base's matrices (%s values) held once in bf16 on the device, the rest in fp32", fmtCount(int64(r.m.Half.N)))
	}
	return nil
}

// loadAdapterCheckpoint reads the adapter's values back from a checkpoint.
func (r *run) loadAdapterCheckpoint(dir string) error {
	f, err := safetensors.Open(filepath.Join(dir, model.PEFTWeightsBase+".safetensors"))
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	defer f.Close()
	host := make([]float32, r.ad.Layout.Total)
	for i, s := range r.ad.Layout.Specs {
		off := r.ad.Layout.Offsets[i]
		if err := f.ReadFloat32Into(model.PEFTPrefix+s.Name, host[off:off+s.Elements()]); err != nil {
			return fmt.Errorf("resume: %w", err)
		}
	}
	r.be.Upload(r.ad.Params, host)
	r.ad.CopyInto(r.m)
	return r.be.Err()
}

// writeAdapter writes a PEFT adapter folder for the current state: the
// adapter itself, the tokenizer (with the mask token), the "dllm" block and
// the sampler defaults, so that `dllm generate SRC --adapter DIR` and PEFT's
// PeftModel.from_pretrained both load it.
func (r *run) writeAdapter(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := r.ad.WritePEFT(dir, r.opt.Source, r.m); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, model.AdapterDLLMName), map[string]any{"dllm": r.dllmBlock(), "vocab_size": r.m.Cfg.Vocab}); err != nil {
		return err
	}
	if err := r.tok.Save(dir); err != nil {
		return fmt.Errorf("adapter tokenizer: %w", err)
	}
	for _, f := range tokenizerFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			continue
		}
		if err := copyFile(filepath.Join(r.opt.Source, f), filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return writeJSON(filepath.Join(dir, "generation_config.json"), r.generationConfig())
}

// sourceFingerprint identifies the base weights a LoRA run adapts, which
// its checkpoints do not hold: CRC-32C over config.json and, for every
// *.safetensors file, its name, size, header and 64 KiB at 16 evenly
// spaced offsets of its data. It reads about 1 MiB per file, so a resume of
// a 7B run does not read the base twice.
func sourceFingerprint(dir string) (string, error) {
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return "", err
	}
	h.Write(cfg)
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	sort.Strings(files)
	if len(files) == 0 {
		return "", fmt.Errorf("%s: no *.safetensors files", dir)
	}
	buf := make([]byte, 64<<10)
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return "", err
		}
		size := st.Size()
		io.WriteString(h, filepath.Base(p))
		binary.Write(h, binary.LittleEndian, size)
		var n [8]byte
		if _, err := io.ReadFull(f, n[:]); err != nil {
			f.Close()
			return "", fmt.Errorf("%s: %v", p, err)
		}
		hdr := int64(binary.LittleEndian.Uint64(n[:]))
		if hdr < 0 || 8+hdr > size {
			f.Close()
			return "", fmt.Errorf("%s: bad safetensors header length", p)
		}
		if _, err := io.CopyN(h, f, hdr); err != nil {
			f.Close()
			return "", err
		}
		data := size - 8 - hdr
		for i := int64(0); i < 16 && data > 0; i++ {
			off := 8 + hdr + data*i/16
			k, err := f.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				f.Close()
				return "", err
			}
			h.Write(buf[:k])
		}
		f.Close()
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], h.Sum32())
	return hex.EncodeToString(sum[:]), nil
}

// loraDropout turns LoRA dropout on for micro-batch micro of step (a mask
// stream of its own, from the run's seed, so a resumed run draws the same
// masks) or, with step < 0, off for what follows (evaluation).
func (r *run) loraDropout(step, micro int) {
	if !r.lora() {
		return
	}
	if step < 0 {
		r.ad.SetDropout(false, 0)
		return
	}
	r.ad.SetDropout(true, r.opt.Seed^(uint64(step)<<20|uint64(micro))*0x9E3779B97F4A7C15)
}
