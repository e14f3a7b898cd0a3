package model

import (
	"fmt"
	"slices"
	"strings"

	"github.com/dllm-dev/dllm/safetensors"
)

// Tensor names of the Hugging Face decoder checkpoints.
const (
	EmbedName  = "model.embed_tokens.weight"
	NormName   = "model.norm.weight"
	LMHeadName = "lm_head.weight"
)

// TensorSpec is one expected tensor.
type TensorSpec struct {
	Name  string
	Shape []int
}

// Elements is the product of the shape.
func (t TensorSpec) Elements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// LayerPrefix is the name prefix of decoder layer i.
func LayerPrefix(i int) string { return fmt.Sprintf("model.layers.%d.", i) }

// Tensors lists the parameters of the architecture in the order of the
// parameter buffer: the blocks' tables (paramTable). With tied embeddings
// there is one shared matrix, listed under EmbedName; a checkpoint may store
// it as lm_head.weight instead.
func (c *Config) Tensors() []TensorSpec {
	b := newBlocks(c)
	var out []TensorSpec
	for _, p := range paramTable(c, &b.Embed, b.Layers, &b.Norm, &b.Head) {
		out = append(out, TensorSpec{p.Suffix, p.Shape})
	}
	return out
}

// ParamCount is the number of parameters, a tied matrix counted once.
func (c *Config) ParamCount() int64 {
	var n int64
	for _, t := range c.Tensors() {
		n += int64(t.Elements())
	}
	return n
}

// Problem is one inconsistency between a checkpoint and its config.
type Problem struct {
	Tensor string `json:"tensor"`
	Kind   string `json:"kind"` // missing, unexpected, shape, dtype
	Detail string `json:"detail"`
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s (%s)", p.Tensor, p.Detail, p.Kind) }

// Check compares a checkpoint's tensors with what the config expects. It
// also reports where the tied matrix is stored ("embed_tokens", "lm_head",
// "both" or "" when untied).
func (c *Config) Check(r *safetensors.Reader) (problems []Problem, tiedAs string) {
	expected := map[string]bool{}
	for _, t := range c.Tensors() {
		name := t.Name
		if t.Name == EmbedName && c.TieEmbeddings {
			hasE, hasL := r.Has(EmbedName), r.Has(LMHeadName)
			switch {
			case hasE && hasL:
				tiedAs = "both"
				expected[LMHeadName] = true
				problems = append(problems, c.checkShape(r, LMHeadName, t.Shape)...)
			case hasL:
				tiedAs, name = "lm_head", LMHeadName
			default:
				tiedAs = "embed_tokens"
			}
		}
		expected[name] = true
		if !r.Has(name) {
			problems = append(problems, Problem{name, "missing", fmt.Sprintf("expected shape %v, not in the checkpoint", t.Shape)})
			continue
		}
		problems = append(problems, c.checkShape(r, name, t.Shape)...)
	}
	for _, n := range r.Names() {
		if !expected[n] && !ignorable(n) {
			info, _ := r.Info(n)
			problems = append(problems, Problem{n, "unexpected", fmt.Sprintf("shape %v is not part of a %s model with this config", info.Shape, c.ModelType)})
		}
	}
	return problems, tiedAs
}

func (c *Config) checkShape(r *safetensors.Reader, name string, want []int) []Problem {
	info, _ := r.Info(name)
	got := make([]int, len(info.Shape))
	for i, d := range info.Shape {
		got[i] = int(d)
	}
	var ps []Problem
	if !slices.Equal(got, want) {
		ps = append(ps, Problem{name, "shape", fmt.Sprintf("shape %v, config expects %v", got, want)})
	}
	if !info.DType.Float() {
		ps = append(ps, Problem{name, "dtype", fmt.Sprintf("dtype %s cannot be loaded (F32, F16 or BF16 only)", info.DType)})
	}
	return ps
}

// ignorable tensors are buffers some exporters write that carry no weights.
func ignorable(name string) bool {
	return strings.HasSuffix(name, ".rotary_emb.inv_freq")
}
