package convert

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// tokenizerFiles are copied from the source when the tokenizer did not
// rewrite them.
var tokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
	"vocab.json", "merges.txt", "added_tokens.json"}

// DLLMBlock is the "dllm" object of an exported config.json.
func (r *run) dllmBlock() model.DLLMInfo {
	o := &r.opt
	info := model.DLLMInfo{MaskTokenID: r.plan.ID, Shift: o.Shift, Attention: "bidirectional", Objective: "masked-diffusion",
		Weighting: o.Weighting, Source: o.Source, Steps: r.state.Step, TokensSeen: r.state.TokensSeen, TMin: o.TMin, DocMask: o.DocMask}
	if o.Weighting == "cart" {
		info.CartP = o.CartP
	}
	if b := r.finalBlock(); b > 0 {
		info.Attention, info.BlockSize = "block", b
	}
	if o.SFT {
		info.Objective = "masked-diffusion-sft" // prompts clean, responses masked
	}
	return info
}

// finalBlock is the block size the run ends with, 0 for plain diffusion.
func (r *run) finalBlock() int {
	if len(r.sched) == 0 {
		return 0
	}
	return r.sched[len(r.sched)-1].Block
}

// exportDType is --dtype, else the dtype the source stored its embedding in.
func (r *run) exportDType() safetensors.DType {
	if r.opt.DType != "" {
		d, _ := safetensors.ParseDType(r.opt.DType)
		return d
	}
	if rd, err := safetensors.Open(r.opt.Source); err == nil {
		defer rd.Close()
		for _, n := range []string{model.EmbedName, model.LMHeadName} {
			if info, ok := rd.Info(n); ok && info.DType.Float() {
				return info.DType
			}
		}
	}
	return safetensors.F32
}

// export writes OUT/final in Hugging Face layout: weights under the source's
// names, config.json with the "dllm" block, the tokenizer with the mask
// token, generation_config.json, a model card; then the loss plot and
// summary.json beside it.
func (r *run) export() error {
	final := filepath.Join(r.opt.Out, "final")
	tmp, err := os.MkdirTemp(r.opt.Out, ".final.tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if r.lora() && r.opt.Export != "merged" {
		if err := r.writeAdapter(filepath.Join(tmp, "adapter")); err != nil {
			return fmt.Errorf("export adapter: %w", err)
		}
	}
	if err := r.exportMerged(tmp); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(tmp, "README.md"), []byte(r.modelCard())); err != nil {
		return err
	}
	syncPath(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := replaceDir(tmp, final); err != nil {
		return err
	}
	r.summary.Export = final
	if err := r.plotLoss(filepath.Join(r.opt.Out, "loss.png")); err != nil {
		r.logf("loss plot not written: %v", err)
	}
	if err := writeJSON(filepath.Join(r.opt.Out, "summary.json"), r.summary); err != nil {
		return err
	}
	return nil
}

// exportMerged writes the model in HF layout into dir (with a LoRA run: W +
// (alpha/r) B A, unless --export adapter).
func (r *run) exportMerged(tmp string) error {
	if r.lora() && r.opt.Export == "adapter" {
		return nil
	}
	m := r.m
	dt := r.exportDType()
	if err := r.exportWeights(tmp, dt); err != nil {
		return fmt.Errorf("export weights: %w", err)
	}
	if err := writeJSON(filepath.Join(tmp, "config.json"), exportConfig(m.Cfg, m.Cfg.Vocab, dt, r.dllmBlock())); err != nil {
		return err
	}
	if err := r.tok.Save(tmp); err != nil {
		return fmt.Errorf("export tokenizer: %w", err)
	}
	for _, f := range tokenizerFiles {
		if _, err := os.Stat(filepath.Join(tmp, f)); err == nil {
			continue
		}
		if err := copyFile(filepath.Join(r.opt.Source, f), filepath.Join(tmp, f)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return writeJSON(filepath.Join(tmp, "generation_config.json"), r.generationConfig())
}

// exportWeights writes the weights into tmp: the parameters, or with LoRA
// the merged ones, which read the source files through one reader.
func (r *run) exportWeights(tmp string, dt safetensors.DType) error {
	m := r.m
	fetch, closeSrc := m.ParamFetch(), func() error { return nil }
	if r.lora() {
		var err error
		if fetch, closeSrc, err = r.ad.OpenMerged(m); err != nil {
			return err
		}
	}
	_, err := safetensors.Write(tmp, m.ExportSpecs(), fetch, safetensors.WriteOptions{DType: dt})
	if cerr := closeSrc(); err == nil {
		err = cerr
	}
	return err
}

// exportConfig is the source's config.json with the vocabulary, dtype and
// "dllm" block of the export. A source saved by transformers 5 has "dtype"
// (read before "torch_dtype": both are rewritten) and rope_parameters
// instead of rope_theta and rope_scaling, which transformers 4 reads: they
// are added from it.
func exportConfig(c *model.Config, vocab int, dt safetensors.DType, info model.DLLMInfo) map[string]any {
	cfg := c.RawJSON()
	if rp, ok := c.Raw["rope_parameters"].(map[string]any); ok {
		if th, ok := rp["rope_theta"]; ok && c.Raw["rope_theta"] == nil {
			cfg["rope_theta"] = th
		}
		if t, _ := rp["rope_type"].(string); t != "" && t != "default" && c.Raw["rope_scaling"] == nil {
			// Without rope_theta: transformers 4 warns of it as an unknown key there.
			rs := maps.Clone(rp)
			delete(rs, "rope_theta")
			cfg["rope_scaling"] = rs
		}
	}
	cfg["vocab_size"] = vocab
	name := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.BF16: "bfloat16", safetensors.F16: "float16"}[dt]
	cfg["torch_dtype"] = name
	if _, ok := cfg["dtype"]; ok {
		cfg["dtype"] = name
	}
	cfg["dllm"] = info
	return cfg
}

// generationConfig keeps the source's generation_config.json and adds the
// diffusion sampler's defaults.
func (r *run) generationConfig() map[string]any {
	g := map[string]any{}
	if b, err := regfile.ReadFile(filepath.Join(r.opt.Source, "generation_config.json")); err == nil {
		json.Unmarshal(b, &g)
	}
	genLen := min(128, r.opt.SeqLen)
	block := genLen
	if b := r.finalBlock(); b > 0 {
		block = b
	}
	g["mask_token_id"] = r.plan.ID
	g["gen_length"] = genLen
	g["steps"] = genLen
	g["block_length"] = block
	g["alg"] = "confidence"
	g["temperature"] = 0.0
	if _, ok := g["eos_token_id"]; !ok && r.tok.EOS() >= 0 {
		g["eos_token_id"] = r.tok.EOS()
	}
	if _, ok := g["bos_token_id"]; !ok && r.tok.BOS() >= 0 {
		g["bos_token_id"] = r.tok.BOS()
	}
	return g
}

func (r *run) modelCard() string {
	o, st := &r.opt, &r.state
	var b strings.Builder
	fmt.Fprintf(&b, "# %s, converted to a masked-diffusion language model\n\n", filepath.Base(filepath.Clean(o.Source)))
	fmt.Fprintf(&b, "Converted by `dllm convert` from `%s` with continued masked-diffusion training (%s).\n\n", o.Source, r.describeAttention())
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| architecture | %s, %s parameters |\n", firstOf(r.m.Cfg.ArchitectureName, r.m.Cfg.ModelType), fmtCount(int64(r.m.Layout.Values)))
	fmt.Fprintf(&b, "| steps | %d (%s tokens) |\n", st.Step, fmtCount(st.TokensSeen))
	fmt.Fprintf(&b, "| objective | shift %v, weighting %s, loss norm %s, t-min %g |\n", o.Shift, o.Weighting, o.LossNorm, o.TMin)
	fmt.Fprintf(&b, "| optimizer | AdamW lr %g (%s, warmup %d, min %g), betas (%g, %g), weight decay %g, clip %g |\n",
		o.LR, o.LRSchedule, o.Warmup, o.MinLR, o.Beta1, o.Beta2, o.WeightDecay, o.Clip)
	fmt.Fprintf(&b, "| batch | %d x %d tokens x %d accumulation |\n", o.BatchSize, o.SeqLen, o.GradAccum)
	fmt.Fprintf(&b, "| mask token | `%s` = %d (%s) |\n", r.plan.Token, r.plan.ID, r.plan.Kind)
	if r.lora() {
		fmt.Fprintf(&b, "| LoRA | rank %d, alpha %g, dropout %g, targets %s%s; %s trainable values; base frozen |\n", o.LoRARank, o.LoRAAlpha,
			o.LoRADropout, strings.Join(o.LoRATargets, ","), map[bool]string{true: ", norms trained", false: ""}[o.LoRATrainNorms], fmtCount(int64(r.ad.Trainable())))
	}
	fmt.Fprintf(&b, "| init | %s |\n", o.Init)
	fmt.Fprintf(&b, "| data | %s |\n\n", strings.Join(o.Data, ", "))
	if st.Before != nil || st.LastEval != nil {
		fmt.Fprintf(&b, "Held-out evaluation (diffusion NELBO in nats/token, an upper bound on the NLL; bidirectional attention):\n\n")
		fmt.Fprintf(&b, "| | NELBO | ppl bound | acc@0.15 | acc@0.5 | acc@0.9 |\n|---|---|---|---|---|---|\n")
		for _, e := range []struct {
			name string
			r    *diffusion.EvalResult
		}{{"before", st.Before}, {"after", st.LastEval}} {
			if e.r == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %.4f | %.2f |", e.name, e.r.NELBO, e.r.PPLBound)
			for _, a := range e.r.Accuracy {
				fmt.Fprintf(&b, " %.3f |", a.Accuracy)
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Sample with `dllm generate %s --prompt \"...\"`; measure with `dllm eval %s --data FILE --mode diffusion`.\n",
		filepath.Join(o.Out, "final"), filepath.Join(o.Out, "final"))
	transformersUse(&b, r.dllmBlock())
	return b.String()
}

// transformersUse tells a transformers user the attention to pass: without
// an attention_mask transformers applies a causal one, not this model's.
func transformersUse(b *strings.Builder, info model.DLLMInfo) {
	b.WriteString("\n## In transformers\n\n")
	b.WriteString("`AutoModelForCausalLM.from_pretrained(\"final\")` loads it without remote code, but this model's attention is not causal, ")
	b.WriteString("and without an `attention_mask` transformers applies a causal one. Pass an additive float mask of shape (batch, 1, L, L), ")
	b.WriteString("0 where query i may see key j and the dtype's minimum elsewhere:\n\n```python\n")
	b.WriteString("L = input_ids.shape[1]\n")
	if info.Attention == "block" {
		fmt.Fprintf(b, "i = torch.arange(L)  # block attention, block size %d: key j visible to query i when j // %d <= i // %d\n", info.BlockSize, info.BlockSize, info.BlockSize)
		fmt.Fprintf(b, "visible = (i[None, :] // %d) <= (i[:, None] // %d)\n", info.BlockSize, info.BlockSize)
		b.WriteString("mask = torch.zeros(L, L, dtype=model.dtype).masked_fill(~visible, torch.finfo(model.dtype).min)[None, None]\n")
	} else {
		b.WriteString("mask = torch.zeros(1, 1, L, L, dtype=model.dtype)  # bidirectional: every key visible\n")
	}
	b.WriteString("logits = model(input_ids=input_ids, attention_mask=mask).logits\n```\n\n")
	fmt.Fprintf(b, "Positions to predict hold the mask token (id %d). ", info.MaskTokenID)
	if info.Shift {
		b.WriteString("The model is shifted (`\"shift\": true`): the logits at position i predict the token at i + 1, as in the AR source.\n")
	} else {
		b.WriteString("The logits at position i predict the token at i.\n")
	}
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (r *run) describeAttention() string {
	if len(r.sched) > 0 {
		var s []string
		for _, st := range r.sched {
			s = append(s, st.String())
		}
		return "block diffusion, block-size schedule " + strings.Join(s, ",")
	}
	if r.opt.AnnealSteps == 0 {
		return "bidirectional attention from the first step"
	}
	return fmt.Sprintf("attention annealed from causal to bidirectional over %d steps", r.opt.AnnealSteps)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

func copyFile(src, dst string) error {
	in, err := regfile.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	b, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, b)
}

// plotLoss draws the training loss (and held-out NELBO) from metrics.jsonl.
func (r *run) plotLoss(path string) error {
	f, err := os.Open(filepath.Join(r.opt.Out, "metrics.jsonl"))
	if err != nil {
		return err
	}
	defer f.Close()
	var train, eval plotter.XYs
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var rec struct {
			Type string
			Step float64
			Loss float64
			Eval *struct{ NELBO float64 }
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil {
			continue
		}
		switch {
		case rec.Type == "train":
			train = append(train, plotter.XY{X: rec.Step, Y: rec.Loss})
		case rec.Type == "eval" && rec.Eval != nil:
			eval = append(eval, plotter.XY{X: rec.Step, Y: rec.Eval.NELBO})
		}
	}
	if len(train) == 0 {
		return fmt.Errorf("no training steps recorded")
	}
	p := plot.New()
	p.Title.Text = "dllm convert: " + filepath.Base(filepath.Clean(r.opt.Source))
	p.X.Label.Text = "step"
	p.Y.Label.Text = "nats"
	smooth := movingAverage(train, max(len(train)/50, 1))
	l, err := plotter.NewLine(smooth)
	if err != nil {
		return err
	}
	p.Add(l)
	p.Legend.Add("train loss: weighted CE per masked token (moving average)", l)
	if len(eval) > 0 {
		e, pts, err := plotter.NewLinePoints(eval)
		if err != nil {
			return err
		}
		e.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		e.Color = color.RGBA{R: 200, A: 255}
		pts.Color = e.Color
		p.Add(e, pts)
		p.Legend.Add("held-out NELBO, nats/token", e, pts)
	}
	p.Legend.Top = true
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

func movingAverage(xy plotter.XYs, w int) plotter.XYs {
	out := make(plotter.XYs, len(xy))
	var s float64
	for i := range xy {
		s += xy[i].Y
		if i >= w {
			s -= xy[i-w].Y
		}
		out[i] = plotter.XY{X: xy[i].X, Y: s / float64(min(i+1, w))}
	}
	return out
}
