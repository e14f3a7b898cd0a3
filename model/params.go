package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/safetensors"
)

// Layout places every parameter tensor in one flat buffer, in the order of
// Config.Tensors.
type Layout struct {
	Specs   []TensorSpec
	Offsets []int
	Total   int
	index   map[string]int
}

// NewLayout lays out the parameters of cfg.
func NewLayout(cfg *Config) *Layout {
	l := &Layout{Specs: cfg.Tensors(), index: map[string]int{}}
	for i, s := range l.Specs {
		l.index[s.Name] = i
		l.Offsets = append(l.Offsets, l.Total)
		l.Total += s.Elements()
	}
	return l
}

// View returns tensor name's slice of buf (the parameter or gradient buffer).
func (l *Layout) View(buf kernels.Buf, name string) (kernels.Buf, bool) {
	i, ok := l.index[name]
	if !ok {
		return kernels.Buf{}, false
	}
	return buf.Slice(l.Offsets[i], l.Specs[i].Elements()), true
}

// Decays reports whether AdamW's weight decay applies to a tensor: matrices
// yes; norms and biases no (what HF Trainer does).
func Decays(name string) bool {
	return !strings.HasSuffix(name, ".bias") && !strings.Contains(name, "norm")
}

// Weights are the per-tensor views of one flat buffer.
type Weights struct {
	Embed, Norm, LMHead kernels.Buf
	Layers              []LayerWeights
}

// LayerWeights are one decoder layer's views; absent tensors have N == 0.
type LayerWeights struct {
	InNorm, Wq, Bq, Wk, Bk, Wv, Bv, Wo, Bo, QNorm, KNorm kernels.Buf
	PostNorm, Gate, Up, Down                             kernels.Buf
}

// Views maps the tensors of cfg onto buf. With tied embeddings LMHead is the
// embedding itself.
func (l *Layout) Views(cfg *Config, buf kernels.Buf) Weights {
	get := func(name string) kernels.Buf { v, _ := l.View(buf, name); return v }
	w := Weights{Embed: get(EmbedName), Norm: get(NormName)}
	if cfg.TieEmbeddings {
		w.LMHead = w.Embed
	} else {
		w.LMHead = get(LMHeadName)
	}
	for i := 0; i < cfg.Layers; i++ {
		p := LayerPrefix(i)
		g := func(n string) kernels.Buf { return get(p + n) }
		w.Layers = append(w.Layers, LayerWeights{
			InNorm: g("input_layernorm.weight"),
			Wq:     g("self_attn.q_proj.weight"), Bq: g("self_attn.q_proj.bias"),
			Wk: g("self_attn.k_proj.weight"), Bk: g("self_attn.k_proj.bias"),
			Wv: g("self_attn.v_proj.weight"), Bv: g("self_attn.v_proj.bias"),
			Wo: g("self_attn.o_proj.weight"), Bo: g("self_attn.o_proj.bias"),
			QNorm: g("self_attn.q_norm.weight"), KNorm: g("self_attn.k_norm.weight"),
			PostNorm: g("post_attention_layernorm.weight"),
			Gate:     g("mlp.gate_proj.weight"), Up: g("mlp.up_proj.weight"), Down: g("mlp.down_proj.weight"),
		})
	}
	return w
}

// Model is a decoder with its parameters on a backend. Gradients are
// allocated by EnableGrads.
type Model struct {
	Cfg    *Config
	BE     kernels.Backend
	Layout *Layout
	Params kernels.Buf
	W      Weights
	Grads  kernels.Buf
	G      Weights
	// TiedAs records how the source stored a tied matrix ("embed_tokens" or
	// "lm_head") so that an export keeps the source's names.
	TiedAs string

	ropeCos, ropeSin kernels.Buf
	ropeLen          int
}

// New allocates a model with zero parameters.
func New(cfg *Config, be kernels.Backend) *Model {
	l := NewLayout(cfg)
	m := &Model{Cfg: cfg, BE: be, Layout: l, Params: be.Alloc(l.Total), TiedAs: "embed_tokens"}
	m.W = l.Views(cfg, m.Params)
	return m
}

// Load reads config.json and the weights of an HF model directory.
func Load(dir string, be kernels.Backend) (*Model, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	problems, tiedAs := cfg.Check(r)
	for _, p := range problems {
		if p.Kind != "unexpected" {
			return nil, fmt.Errorf("%s does not match its config.json: %s (run 'dllm inspect %s' for the full list)", dir, p, dir)
		}
	}
	m := New(cfg, be)
	if tiedAs == "lm_head" {
		m.TiedAs = "lm_head"
	}
	if err := m.LoadWeights(r); err != nil {
		return nil, err
	}
	return m, be.Err()
}

// LoadWeights copies every expected tensor of r into the parameter buffer.
func (m *Model) LoadWeights(r *safetensors.Reader) error {
	host := m.Params.Host
	if host == nil {
		host = make([]float32, m.Layout.Total)
	}
	for i, s := range m.Layout.Specs {
		name := s.Name
		if name == EmbedName && m.Cfg.TieEmbeddings && !r.Has(EmbedName) {
			name = LMHeadName
		}
		dst := host[m.Layout.Offsets[i] : m.Layout.Offsets[i]+s.Elements()]
		if err := r.ReadFloat32Into(name, dst); err != nil {
			return err
		}
	}
	if m.Params.Host == nil {
		m.BE.Upload(m.Params, host)
	}
	return nil
}

// InitRandom draws fresh weights the way transformers initialises these
// models: normal(0, initializer_range) for matrices and embeddings, ones for
// norms, zeros for biases. It is the baseline a conversion is compared with.
func (m *Model) InitRandom(seed uint64) {
	std := 0.02
	if v, ok := m.Cfg.Raw["initializer_range"].(float64); ok && v > 0 {
		std = v
	}
	rng := rand.New(rand.NewPCG(seed, 0x6d6f64656c))
	host := make([]float32, m.Layout.Total)
	for i, s := range m.Layout.Specs {
		dst := host[m.Layout.Offsets[i] : m.Layout.Offsets[i]+s.Elements()]
		switch {
		case strings.HasSuffix(s.Name, ".bias"):
		case strings.Contains(s.Name, "norm"):
			for j := range dst {
				dst[j] = 1
			}
		default:
			for j := range dst {
				dst[j] = float32(rng.NormFloat64() * std)
			}
		}
	}
	m.BE.Upload(m.Params, host)
}

// EnableGrads allocates the gradient buffer (zeroed).
func (m *Model) EnableGrads() {
	if m.Grads.N == 0 {
		m.Grads = m.BE.Alloc(m.Layout.Total)
		m.BE.Zero(m.Grads)
		m.G = m.Layout.Views(m.Cfg, m.Grads)
	}
}

// ensureRope keeps cos/sin tables for at least n positions on the backend.
func (m *Model) ensureRope(n int) {
	if n <= m.ropeLen {
		return
	}
	n = max(n, m.Cfg.MaxPositions, 64)
	cos, sin := m.Cfg.RopeTables(n)
	if m.ropeLen > 0 {
		m.BE.Free(m.ropeCos)
		m.BE.Free(m.ropeSin)
	}
	m.ropeCos, m.ropeSin = m.BE.Alloc(len(cos)), m.BE.Alloc(len(sin))
	m.BE.Upload(m.ropeCos, cos)
	m.BE.Upload(m.ropeSin, sin)
	m.ropeLen = n
}

// ExportSpecs lists the tensors to write, named as the source named them.
func (m *Model) ExportSpecs() []safetensors.Spec {
	var out []safetensors.Spec
	for _, s := range m.Layout.Specs {
		name := s.Name
		if name == EmbedName && m.Cfg.TieEmbeddings && m.TiedAs == "lm_head" {
			name = LMHeadName
		}
		shape := make([]int64, len(s.Shape))
		for i, d := range s.Shape {
			shape[i] = int64(d)
		}
		out = append(out, safetensors.Spec{Name: name, Shape: shape})
	}
	return out
}

// FetchFrom returns a safetensors.Fetch reading tensors out of buf (the
// parameters, or an optimizer state with the same layout).
func (m *Model) FetchFrom(buf kernels.Buf) safetensors.Fetch {
	return func(name string, dst []float32) error {
		if name == LMHeadName && m.Cfg.TieEmbeddings {
			name = EmbedName
		}
		v, ok := m.Layout.View(buf, name)
		if !ok {
			return fmt.Errorf("no parameter %q", name)
		}
		m.BE.Download(dst, v)
		return m.BE.Err()
	}
}

// HasNonFinite reports whether any value of buf is NaN or infinite.
func HasNonFinite(be kernels.Backend, buf kernels.Buf) bool {
	s := be.SumSquares(buf)
	return math.IsNaN(s) || math.IsInf(s, 0)
}

// GrowVocab returns a copy of the model with n more vocabulary rows (a new
// mask token): the new rows of the embedding, and of an untied lm_head, are
// the mean of the existing rows (DESIGN.md §3). config.json's vocab_size
// follows.
func (m *Model) GrowVocab(n int) (*Model, error) {
	if n <= 0 {
		return m, nil
	}
	cfg := *m.Cfg
	cfg.Raw = map[string]any{}
	for k, v := range m.Cfg.Raw {
		cfg.Raw[k] = v
	}
	cfg.Vocab += n
	cfg.Raw["vocab_size"] = cfg.Vocab
	g := New(&cfg, m.BE)
	g.TiedAs = m.TiedAs
	old := make([]float32, m.Layout.Total)
	m.BE.Download(old, m.Params)
	host := make([]float32, g.Layout.Total)
	H := cfg.Hidden
	for i, s := range g.Layout.Specs {
		dst := host[g.Layout.Offsets[i] : g.Layout.Offsets[i]+s.Elements()]
		j := m.Layout.index[s.Name]
		src := old[m.Layout.Offsets[j] : m.Layout.Offsets[j]+m.Layout.Specs[j].Elements()]
		copy(dst, src)
		if s.Name != EmbedName && s.Name != LMHeadName {
			continue
		}
		rows := len(src) / H
		mean := make([]float64, H)
		for r := 0; r < rows; r++ {
			for c := 0; c < H; c++ {
				mean[c] += float64(src[r*H+c])
			}
		}
		for r := rows; r < rows+n; r++ {
			for c := 0; c < H; c++ {
				dst[r*H+c] = float32(mean[c] / float64(rows))
			}
		}
	}
	g.BE.Upload(g.Params, host)
	return g, g.BE.Err()
}
