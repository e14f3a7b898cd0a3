package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/dllm-dev/dllm/internal/regfile"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/safetensors"
)

// PEFT's file names in an adapter folder.
const (
	PEFTConfigName  = "adapter_config.json"
	PEFTWeightsBase = "adapter_model" // adapter_model.safetensors
	// AdapterDLLMName holds the "dllm" block of the diffusion model the
	// adapter makes (config.json's, which the base lacks).
	AdapterDLLMName = "dllm.json"
)

// lmHeadRowsName is PEFT's name for trained lm_head rows of an untied model.
const lmHeadRowsName = "lm_head.token_adapter.trainable_tokens_delta"

// PEFTConfig is the adapter_config.json dllm writes: the fields of PEFT's
// LoraConfig (defaults where dllm has no setting), so that
// PeftModel.from_pretrained loads it.
func (a *LoRA) PEFTConfig(base string, c *Config) map[string]any {
	var modules []string
	if a.Cfg.TrainNorms {
		seen := map[string]bool{}
		for _, s := range a.Layout.Specs {
			if strings.Contains(s.Name, "norm") {
				n := lastName(strings.TrimSuffix(s.Name, ".weight"))
				if !seen[n] {
					seen[n] = true
					modules = append(modules, n)
				}
			}
		}
	}
	cfg := map[string]any{
		"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
		"r": a.Cfg.Rank, "lora_alpha": a.Cfg.Alpha, "lora_dropout": a.Cfg.Dropout,
		"target_modules": a.modules(), "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
		"init_lora_weights": true, "use_rslora": false, "use_dora": false, "rank_pattern": map[string]any{},
		"alpha_pattern": map[string]any{}, "layers_to_transform": nil, "layers_pattern": nil, "revision": nil,
		"modules_to_save": nil,
	}
	if len(modules) > 0 {
		cfg["modules_to_save"] = modules
	}
	if len(a.Cfg.TrainRows) > 0 {
		cfg["trainable_token_indices"] = a.Cfg.TrainRows
	}
	return cfg
}

// modules are the adapted linears' own names, as PEFT's target_modules
// match them: the targets, Mixtral's experts as w1, w3, w2.
func (a *LoRA) modules() []string {
	var out []string
	for _, ls := range a.Layers {
		for _, l := range ls {
			if n := lastName(l.mod); !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// WritePEFT writes the adapter as PEFT saves one: adapter_config.json and
// adapter_model.safetensors (F32) with PEFT's tensor names.
func (a *LoRA) WritePEFT(dir, base string, m *Model) error {
	var specs []safetensors.Spec
	for _, s := range a.Layout.Specs {
		shape := make([]int64, len(s.Shape))
		for i, d := range s.Shape {
			shape[i] = int64(d)
		}
		specs = append(specs, safetensors.Spec{Name: PEFTPrefix + s.Name, Shape: shape})
	}
	fetch := func(name string, dst []float32) error {
		v, ok := a.Layout.View(a.Params, strings.TrimPrefix(name, PEFTPrefix))
		if !ok {
			return fmt.Errorf("no adapter tensor %q", name)
		}
		m.BE.Download(dst, v)
		return m.BE.Err()
	}
	if _, err := safetensors.Write(dir, specs, fetch, safetensors.WriteOptions{DType: safetensors.F32, BaseName: PEFTWeightsBase}); err != nil {
		return fmt.Errorf("adapter weights: %w", err)
	}
	b, err := json.MarshalIndent(a.PEFTConfig(base, m.Cfg), "", "  ")
	if err != nil {
		return err
	}
	return safetensors.WriteFileAtomic(filepath.Join(dir, PEFTConfigName), append(b, '\n'), true)
}

// PEFTAdapter is a LoRA adapter folder as PEFT writes it.
type PEFTAdapter struct {
	Dir       string
	Rank      int
	Alpha     float64
	Scale     float32
	Base      string // base_model_name_or_path
	TrainRows []int  // trainable_token_indices of the embedding
	DLLM      *DLLMInfo
	Vocab     int // vocab_size of the adapted model (dllm.json), 0 if unknown
}

// LoadPEFT reads DIR/adapter_config.json and checks that dllm can apply it.
func LoadPEFT(dir string) (*PEFTAdapter, error) {
	b, err := regfile.ReadFile(filepath.Join(dir, PEFTConfigName))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, fmt.Errorf("--adapter %s: no %s (a PEFT LoRA adapter folder has adapter_config.json and adapter_model.safetensors)", dir, PEFTConfigName)
	} else if err != nil {
		return nil, fmt.Errorf("--adapter %s: %v", dir, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("--adapter %s/%s: not valid JSON: %v", dir, PEFTConfigName, err)
	}
	p := &PEFTAdapter{Dir: dir}
	bad := func(f string, a ...any) error {
		return fmt.Errorf("--adapter %s: %s", dir, fmt.Sprintf(f, a...))
	}
	if t, _ := raw["peft_type"].(string); t != "LORA" {
		return nil, bad("peft_type is %v; only LORA adapters can be merged", raw["peft_type"])
	}
	r, _ := raw["r"].(float64)
	alpha, _ := raw["lora_alpha"].(float64)
	if r <= 0 || alpha <= 0 {
		return nil, bad("r (%v) and lora_alpha (%v) must be positive numbers", raw["r"], raw["lora_alpha"])
	}
	p.Rank, p.Alpha = int(r), alpha
	for _, k := range []string{"use_dora", "fan_in_fan_out"} {
		if v, _ := raw[k].(bool); v {
			return nil, bad("%s is true; dllm merges plain LoRA only", k)
		}
	}
	if bias, ok := raw["bias"].(string); ok && bias != "none" {
		return nil, bad("bias is %q; dllm merges adapters with bias \"none\" only", bias)
	}
	for _, k := range []string{"rank_pattern", "alpha_pattern"} {
		if m, ok := raw[k].(map[string]any); ok && len(m) > 0 {
			return nil, bad("%s is set; dllm merges adapters with one rank and alpha only", k)
		}
	}
	p.Scale = float32(alpha / r)
	if v, _ := raw["use_rslora"].(bool); v {
		p.Scale = float32(alpha / math.Sqrt(r))
	}
	p.Base, _ = raw["base_model_name_or_path"].(string)
	switch idx := raw["trainable_token_indices"].(type) {
	case []any:
		p.TrainRows = intList(idx)
	case map[string]any:
		for k, v := range idx {
			if l, ok := v.([]any); ok && (k == "embed_tokens" || strings.HasSuffix(k, ".embed_tokens")) {
				p.TrainRows = intList(l)
			}
		}
	}
	if b, err := regfile.ReadFile(filepath.Join(dir, AdapterDLLMName)); err == nil {
		var d struct {
			DLLM  *DLLMInfo `json:"dllm"`
			Vocab int       `json:"vocab_size"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, bad("%s is not valid JSON: %v", AdapterDLLMName, err)
		}
		p.DLLM, p.Vocab = d.DLLM, d.Vocab
	}
	if st, err := os.Stat(filepath.Join(dir, PEFTWeightsBase+".safetensors")); err != nil || !st.Mode().IsRegular() {
		if _, err := os.Stat(filepath.Join(dir, PEFTWeightsBase+".bin")); err == nil {
			return nil, bad("holds %s.bin (a PyTorch pickle), which dllm does not read: save the adapter with safe_serialization=True (adapter_model.safetensors)", PEFTWeightsBase)
		}
		return nil, bad("no %s.safetensors (a PEFT LoRA adapter folder has %s and %s.safetensors)", PEFTWeightsBase, PEFTConfigName, PEFTWeightsBase)
	}
	return p, nil
}

func intList(l []any) []int {
	var out []int
	for _, v := range l {
		if f, ok := v.(float64); ok {
			out = append(out, int(f))
		}
	}
	return out
}

// Merge applies the adapter to m and returns the merged model: W += scale
// B A for every lora_A/lora_B pair, trained embedding rows replace the
// model's (the vocabulary grows first when a row is past its end, new rows
// the mean of the others, as convert adds a mask token), and every other
// tensor (PEFT's modules_to_save) replaces the model's.
func (p *PEFTAdapter) Merge(m *Model) (*Model, error) {
	r, err := safetensors.Open(filepath.Join(p.Dir, PEFTWeightsBase+".safetensors"))
	if err != nil {
		return nil, adapterError("--adapter %s: %w", p.Dir, err)
	}
	defer r.Close()
	if need := p.vocab(); need > m.Cfg.Vocab {
		g, err := m.GrowVocab(need - m.Cfg.Vocab)
		if err != nil {
			return nil, err
		}
		m.BE.Free(m.Params)
		m = g
	}
	if p.DLLM != nil {
		m.Cfg.DLLM = p.DLLM
	}
	be, H := m.BE, m.Cfg.Hidden
	names := append([]string(nil), r.Names()...)
	sort.Strings(names)
	for _, full := range names {
		name, ok := strings.CutPrefix(full, PEFTPrefix)
		if !ok {
			return nil, adapterError("--adapter %s: tensor %q lacks PEFT's %q prefix", p.Dir, full, PEFTPrefix)
		}
		switch {
		case strings.HasSuffix(name, ".lora_B.weight"):
			continue // with its lora_A
		case strings.HasSuffix(name, ".lora_A.weight"):
			mod := strings.TrimSuffix(name, ".lora_A.weight")
			if err := p.mergeLinear(m, r, full, PEFTPrefix+mod+".lora_B.weight", mod+".weight"); err != nil {
				return nil, err
			}
		case name == TrainedRowsName || name == lmHeadRowsName:
			target := EmbedName
			if name == lmHeadRowsName {
				if m.Cfg.TieEmbeddings {
					continue // the tied matrix takes the embedding's rows
				}
				target = LMHeadName
			}
			vals, err := r.Float32(full)
			if err != nil {
				return nil, err
			}
			if len(vals) != len(p.TrainRows)*H {
				return nil, adapterError("--adapter %s: %s holds %d values, trainable_token_indices %v needs %d x %d%s", p.Dir, full, len(vals), p.TrainRows, len(p.TrainRows), H, p.otherBase())
			}
			dst, _ := m.Layout.View(m.Params, target)
			for k, row := range p.TrainRows {
				be.Upload(dst.Slice(row*H, H), vals[k*H:(k+1)*H])
			}
		default:
			dst, ok := m.Layout.View(m.Params, name)
			if !ok {
				return nil, adapterError("--adapter %s: tensor %q is not part of the base model%s", p.Dir, full, p.otherBase())
			}
			vals, err := r.Float32(full)
			if err != nil {
				return nil, err
			}
			if len(vals) != dst.N {
				return nil, adapterError("--adapter %s: %s has %d values, the base's tensor %d%s", p.Dir, full, len(vals), dst.N, p.otherBase())
			}
			be.Upload(dst, vals)
		}
	}
	m.ParamsWritten()
	return m, be.Err()
}

func (p *PEFTAdapter) mergeLinear(m *Model, r *safetensors.Reader, aName, bName, wName string) error {
	W, ok := m.Layout.View(m.Params, wName)
	if !ok {
		return adapterError("--adapter %s: %s adapts %s, which the base model does not have%s", p.Dir, aName, wName, p.otherBase())
	}
	ai, ok1 := r.Info(aName)
	bi, ok2 := r.Info(bName)
	if !ok2 {
		return adapterError("--adapter %s: %s has no %s", p.Dir, aName, bName)
	}
	spec := m.Layout.Specs[m.Layout.index[wName]]
	out, in := spec.Shape[0], spec.Shape[1]
	if !ok1 || len(ai.Shape) != 2 || len(bi.Shape) != 2 || int(ai.Shape[1]) != in || int(bi.Shape[0]) != out || ai.Shape[0] != bi.Shape[1] {
		return adapterError("--adapter %s: %s %v and %s %v do not fit %s %v%s", p.Dir, aName, ai.Shape, bName, bi.Shape, wName, spec.Shape, p.otherBase())
	}
	rank := int(ai.Shape[0])
	av, err := r.Float32(aName)
	if err != nil {
		return err
	}
	bv, err := r.Float32(bName)
	if err != nil {
		return err
	}
	return MergeLoRA(m.BE, W, av, bv, out, in, rank, p.Scale)
}

// otherBase ends a mismatch message: the adapter is likely another model's.
func (p *PEFTAdapter) otherBase() string {
	if p.Base != "" {
		return fmt.Sprintf(": the adapter was trained on another model (base_model_name_or_path %s)", p.Base)
	}
	return ": the adapter was trained on another model"
}

// MergeLoRA adds scale * B A (B out x r, A r x in) to W on the backend,
// B A in float32 as the merged export computes it.
func MergeLoRA(be kernels.Backend, W kernels.Buf, A, B []float32, out, in, r int, scale float32) error {
	ab, bb, ba := be.Alloc(len(A)), be.Alloc(len(B)), be.Alloc(out*in)
	defer func() { be.Free(ab); be.Free(bb); be.Free(ba) }()
	defer fp32Products(be)()
	be.Upload(ab, A)
	be.Upload(bb, B)
	be.MatMul(ba, bb, ab, out, in, r, false, false, 0)
	be.Scale(ba, scale, out*in)
	be.Add(W, W, ba, out*in)
	return be.Err()
}

// Describe makes c (the base's config) describe the adapted model: its
// "dllm" block and, when the adapter adds rows, its vocabulary size.
func (p *PEFTAdapter) Describe(c *Config) {
	if p.DLLM != nil {
		c.DLLM = p.DLLM
	}
	c.Vocab = max(c.Vocab, p.vocab())
}

// vocab is the vocabulary the adapter needs: its own, and room for its
// trained rows.
func (p *PEFTAdapter) vocab() int {
	need := p.Vocab
	for _, r := range p.TrainRows {
		need = max(need, r+1)
	}
	return need
}
