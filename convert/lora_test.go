package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

func loraOptions(data, out, src string) Options {
	o := tinyOptions(data, out)
	o.Source = src
	o.LoRARank, o.LoRAAlpha = 4, 8
	o.LR = 1e-2
	o.Resolve()
	return o
}

// bf16 rounds x to bfloat16 (round to nearest even) and back.
func bf16(x float32) float32 {
	b := math.Float32bits(x)
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}

// TestLoRAExport converts the tiny llama (F32, tied) and qwen2 (BF16,
// untied, q/k/v biases) with LoRA and checks final/ against the source and
// final/adapter, computed here: every adapted weight is W + (alpha/r) B A
// (in the source dtype), the mask row is the adapter's trained row, and
// every other tensor is byte-identical to the source. The checkpoint holds
// only the adapter and its moments.
func TestLoRAExport(t *testing.T) {
	data := writeCorpus(t)
	for _, name := range []string{"llama", "qwen2"} {
		src := filepath.Join("..", "testdata", "tiny", name)
		o := loraOptions(data, filepath.Join(t.TempDir(), name), src)
		sum, err := Run(context.Background(), o, cpu.New(2), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		final := filepath.Join(o.Out, "final")
		ad, err := safetensors.Open(filepath.Join(final, "adapter", "adapter_model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		defer ad.Close()
		srcR, _ := safetensors.Open(src)
		defer srcR.Close()
		out, err := safetensors.Open(final)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		rawOf := func(dir, n string) []byte {
			f, err := safetensors.OpenFile(filepath.Join(dir, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b, err := f.Raw(n)
			if err != nil {
				t.Fatal(err)
			}
			return append([]byte(nil), b...)
		}
		mask := sum.MaskToken.ID
		cfg, _ := model.LoadConfig(src)
		H := cfg.Hidden
		scale := o.LoRAAlpha / float64(o.LoRARank)
		var adapted, frozen, movedB int
		for _, n := range out.Names() {
			info, _ := out.Info(n)
			sinfo, ok := srcR.Info(n)
			if !ok || info.DType != sinfo.DType {
				t.Fatalf("%s %s: not in the source or dtype %s, source %v", name, n, info.DType, sinfo.DType)
			}
			mod := strings.TrimSuffix(n, ".weight")
			A, errA := ad.Float32(model.PEFTPrefix + mod + ".lora_A.weight")
			got, _ := out.Float32(n)
			switch {
			case errA == nil:
				B, _ := ad.Float32(model.PEFTPrefix + mod + ".lora_B.weight")
				W, _ := srcR.Float32(n)
				r, in := o.LoRARank, int(info.Shape[1])
				for _, b := range B {
					if b != 0 {
						movedB++
						break
					}
				}
				for i := range W {
					row, col := i/in, i%in
					var ba float64
					for k := 0; k < r; k++ {
						ba += float64(B[row*r+k]) * float64(A[k*in+col])
					}
					want := float32(float64(W[i]) + scale*ba)
					tol := 1e-6 * (1 + math.Abs(float64(want)))
					if info.DType == safetensors.BF16 {
						want = bf16(want)
						tol = math.Abs(float64(want)) / 128 // one bf16 step
					}
					if d := math.Abs(float64(got[i] - want)); d > tol {
						t.Fatalf("%s %s[%d]: exported %v, W + (alpha/r) B A = %v", name, n, i, got[i], want)
					}
				}
				adapted++
			case n == model.EmbedName || (n == model.LMHeadName && cfg.TieEmbeddings):
				rows, _ := ad.Float32(model.PEFTPrefix + model.TrainedRowsName)
				for j := 0; j < H; j++ {
					want := rows[j]
					if info.DType == safetensors.BF16 {
						want = bf16(want)
					}
					if got[mask*H+j] != want {
						t.Fatalf("%s: mask row %d[%d] = %v, adapter %v", name, mask, j, got[mask*H+j], want)
					}
				}
				rawO, rawS := rawOf(final, n), rawOf(src, n)
				es := int(info.DType.Bits() / 8)
				if !bytes.Equal(rawO[:mask*H*es], rawS[:mask*H*es]) || !bytes.Equal(rawO[(mask+1)*H*es:], rawS[(mask+1)*H*es:]) {
					t.Fatalf("%s %s: rows other than the mask row differ from the source", name, n)
				}
			default:
				rawO, rawS := rawOf(final, n), rawOf(src, n)
				if !bytes.Equal(rawO, rawS) {
					t.Fatalf("%s %s: frozen tensor not byte-identical to the source", name, n)
				}
				frozen++
			}
		}
		if adapted != 7*cfg.Layers || frozen == 0 || movedB == 0 {
			t.Fatalf("%s: %d adapted (want %d), %d frozen tensors, %d trained B", name, adapted, 7*cfg.Layers, frozen, movedB)
		}

		// The checkpoint holds the adapter and its moments only.
		ck := sum.Checkpoint
		if _, err := os.Stat(filepath.Join(ck, "model.safetensors")); err == nil {
			t.Errorf("%s: the LoRA checkpoint holds the full model", name)
		}
		opt, err := safetensors.Open(filepath.Join(ck, "optimizer.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(opt.Names()), 2*len(ad.Names()); got != want {
			t.Errorf("%s: %d optimizer tensors, want %d (m and v of the adapter)", name, got, want)
		}
		opt.Close()
		var cfgJSON map[string]any
		raw, _ := os.ReadFile(filepath.Join(final, "adapter", "adapter_config.json"))
		json.Unmarshal(raw, &cfgJSON)
		if cfgJSON["peft_type"] != "LORA" || cfgJSON["base_model_name_or_path"] != src {
			t.Errorf("%s: adapter_config.json %v", name, cfgJSON)
		}
	}
}

// TestLoRAStartsAtSource: with B = 0 the adapted model computes exactly the
// source's function, so a LoRA run's evaluation before training equals a
// full fine-tuning run's, bit for bit.
func TestLoRAStartsAtSource(t *testing.T) {
	data := writeCorpus(t)
	full := tinyOptions(data, filepath.Join(t.TempDir(), "full"))
	full.Steps = 1
	a, err := Run(context.Background(), full, cpu.New(2), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	lo := loraOptions(data, filepath.Join(t.TempDir(), "lora"), tinyLlama)
	lo.Steps = 1
	b, err := Run(context.Background(), lo, cpu.New(2), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if a.Before == nil || b.Before == nil || a.Before.NELBO != b.Before.NELBO {
		t.Fatalf("eval before: full fine-tuning %+v, LoRA %+v", a.Before, b.Before)
	}
	if a.After.NELBO == b.After.NELBO {
		t.Fatalf("one step of LoRA and of full fine-tuning end at the same NELBO %v", a.After.NELBO)
	}
}

// TestLoRAResume: a LoRA run (with dropout) stopped after 3 steps and
// resumed to 6 gives the same losses, bit for bit, as a run of 6; resuming
// against changed base weights is refused.
func TestLoRAResume(t *testing.T) {
	data := writeCorpus(t)
	srcCopy := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(srcCopy, 0o755)
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		if err := copyFile(filepath.Join(tinyLlama, f), filepath.Join(srcCopy, f)); err != nil {
			t.Fatal(err)
		}
	}
	full := loraOptions(data, filepath.Join(t.TempDir(), "full"), srcCopy)
	full.LoRADropout = 0.1
	if _, err := Run(context.Background(), full, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	plain := loraOptions(data, filepath.Join(t.TempDir(), "plain"), srcCopy)
	if _, err := Run(context.Background(), plain, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	if p, f := trainLosses(t, plain.Out), trainLosses(t, full.Out); p[5].Loss == f[5].Loss {
		t.Fatalf("LoRA dropout changed nothing: %v vs %v", p, f)
	}
	part := loraOptions(data, filepath.Join(t.TempDir(), "part"), srcCopy)
	part.LoRADropout = 0.1
	part.Steps = 3
	if _, err := Run(context.Background(), part, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	resumeTo(t, part, 6)
	sameTrainLosses(t, full.Out, part.Out, 6)
	fa, _ := os.ReadFile(filepath.Join(full.Out, "final", "adapter", "adapter_model.safetensors"))
	fb, _ := os.ReadFile(filepath.Join(part.Out, "final", "adapter", "adapter_model.safetensors"))
	if len(fa) == 0 || !bytes.Equal(fa, fb) {
		t.Fatalf("the resumed run's adapter differs from the uninterrupted run's")
	}

	// Change one weight of the base: the run must not resume on it.
	again := loraOptions(data, filepath.Join(t.TempDir(), "again"), srcCopy)
	again.Steps = 2
	if _, err := Run(context.Background(), again, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	f, _ := safetensors.Open(filepath.Join(srcCopy, "model.safetensors"))
	names := f.Names()
	f.Close()
	m, _ := model.Load(srcCopy, cpu.New(1))
	fetch := m.ParamFetch()
	changed := func(name string, dst []float32) error {
		if err := fetch(name, dst); err != nil {
			return err
		}
		if name == names[len(names)/2] {
			dst[len(dst)/2] += 0.5
		}
		return nil
	}
	if _, err := safetensors.Write(srcCopy, m.ExportSpecs(), changed, safetensors.WriteOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	again.Steps, again.Resume, again.Set = 4, true, []string{"steps"}
	_, err := Run(context.Background(), again, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not the base") {
		t.Fatalf("resume on changed base weights: %v", err)
	}
}

func TestLoRAOptions(t *testing.T) {
	for _, c := range []struct {
		set  func(*Options)
		want string
	}{
		{func(o *Options) { o.LoRARank = -1 }, "--lora-rank"},
		{func(o *Options) { o.LoRARank, o.LoRATargets = 4, []string{"qkv"} }, "--lora-targets"},
		{func(o *Options) { o.LoRARank, o.LoRADropout = 4, 1 }, "--lora-dropout"},
		{func(o *Options) { o.Export = "adapter" }, "needs LoRA"},
		{func(o *Options) { o.Export = "zip" }, "--export"},
		{func(o *Options) { o.LoRARank, o.Init = 4, "random" }, "--init random"},
	} {
		o := tinyOptions("x", "y")
		c.set(&o)
		if err := o.Resolve(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want an error about %s", err, c.want)
		}
	}
	o := tinyOptions("x", "y")
	o.LoRARank, o.LoRATargets = 8, []string{"down_proj", "q_proj"}
	if err := o.Resolve(); err != nil || o.LoRAAlpha != 8 || strings.Join(o.LoRATargets, ",") != "q_proj,down_proj" {
		t.Errorf("defaults: %v alpha %v targets %v", err, o.LoRAAlpha, o.LoRATargets)
	}
}

// TestLoRAResumeMoE: a LoRA run on a mixture-of-experts model (adapters on
// every expert, with dropout) resumes bit-identically: 3 + 3 steps give the
// losses and adapter of 6 uninterrupted ones.
func TestLoRAResumeMoE(t *testing.T) {
	data := writeCorpus(t)
	src := filepath.Join(filepath.Dir(tinyLlama), "qwen2_moe")
	full := loraOptions(data, filepath.Join(t.TempDir(), "full"), src)
	full.LoRADropout = 0.1
	if _, err := Run(context.Background(), full, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	part := full
	part.Out, part.Steps = filepath.Join(t.TempDir(), "part"), 3
	if _, err := Run(context.Background(), part, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	resumeTo(t, part, 6)
	if a := sameTrainLosses(t, full.Out, part.Out, 6); a[0].Loss == a[5].Loss {
		t.Fatalf("train records %v: the run did not train", a)
	}
	fa, _ := os.ReadFile(filepath.Join(full.Out, "final", "adapter", "adapter_model.safetensors"))
	fb, _ := os.ReadFile(filepath.Join(part.Out, "final", "adapter", "adapter_model.safetensors"))
	r, err := safetensors.Open(filepath.Join(full.Out, "final", "adapter"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if len(fa) == 0 || !bytes.Equal(fa, fb) || !r.Has("base_model.model.model.layers.1.mlp.experts.0.up_proj.lora_B.weight") {
		t.Fatalf("the resumed run's adapter differs from the uninterrupted run's, or has no expert adapters")
	}
}
