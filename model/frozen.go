package model

import (
	"fmt"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/safetensors"
)

// A frozen-base run (LoRA) never writes the base's matrices, and on a GPU
// with bf16 matmuls every product rounds them to bf16 anyway: LoadFrozen
// holds them once in bf16 (kernels.BF16Weights), not in float32. Only the
// linears' weights and an untied lm_head go there: they are read by
// MatMul and HeadLoss alone. The embedding (gathered, and its trained rows
// written each step), a tied head (the embedding), norms and biases stay
// float32. The products are bit-identical to casting float32 weights per
// call; what changes is the memory. An export reads the base from the
// source files (m.OpenSource), never the rounded copy.

// halfTensors are the tensors a frozen base holds in bf16: every layer
// linear's weight (a mixture of experts' router, experts and shared-expert
// gate included: they too are read by MatMul only) and the untied LM head.
func halfTensors(c *Config, b *blocks) map[string]bool {
	h := map[string]bool{}
	for i, ly := range b.Layers {
		for _, l := range ly.Linears() {
			h[LayerPrefix(i)+l.Name+".weight"] = true
		}
	}
	if !c.TieEmbeddings {
		h[LMHeadName] = true
	}
	return h
}

// LoadFrozen reads dir's weights for a frozen-base run, the vocabulary
// grown by grow rows first (each new row of the embedding and an untied
// lm_head the mean of the existing ones, GrowVocab's rule): on a backend
// with kernels.BF16Weights the matrices of halfTensors go into one bf16
// buffer (m.Half) and the rest into a float32 one (m.Params); elsewhere
// everything is float32, as Load. Tensors are read and uploaded one at a
// time, so the device never holds a float32 copy of the bf16 ones.
func LoadFrozen(dir string, be kernels.Backend, grow int) (*Model, error) {
	cfg, r, tiedAs, err := openChecked(dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	src := &frozenSource{dir: dir, vocab: cfg.Vocab, hidden: cfg.Hidden, tied: cfg.TieEmbeddings}
	if grow > 0 {
		cfg = grownConfig(cfg, grow)
	}
	m := newModel(cfg, be, true)
	if tiedAs == "lm_head" {
		m.TiedAs = "lm_head"
	}
	var host []float32
	for i, s := range m.Layout.Specs {
		n := s.Elements()
		if len(host) < n {
			host = make([]float32, n)
		}
		dst := host[:n]
		if err := src.read(r, s.Name, dst); err != nil {
			return nil, err
		}
		v := m.tensorBuf(i)
		be.Upload(v, dst)
		if v.Half && !m.halfNonFinite {
			// What the device holds: a finite float32 can round to infinity.
			for _, f := range dst {
				if safetensors.BF16Bits(f)&0x7f80 == 0x7f80 { // all-ones exponent: Inf or NaN
					m.halfNonFinite = true
					break
				}
			}
		}
	}
	m.source = src
	return m, be.Err()
}

// frozenSource reads a model's tensors (layout names) from its files,
// growing the vocabulary's tensors past the source's rows.
type frozenSource struct {
	dir           string
	vocab, hidden int
	tied          bool
}

func (s *frozenSource) read(r *safetensors.Reader, name string, dst []float32) error {
	file := name
	if name == EmbedName && s.tied && !r.Has(EmbedName) {
		file = LMHeadName
	}
	if name != EmbedName && name != LMHeadName {
		return r.ReadFloat32Into(file, dst)
	}
	rows := s.vocab * s.hidden
	if len(dst) < rows {
		return fmt.Errorf("%s: %s holds %d values, the model %d", s.dir, name, rows, len(dst))
	}
	if err := r.ReadFloat32Into(file, dst[:rows]); err != nil {
		return err
	}
	meanRows(dst, s.vocab, s.hidden)
	return nil
}

// meanRows fills the rows of dst (rows of h values) past the first n with
// the mean of those n (float64 sums).
func meanRows(dst []float32, n, h int) {
	if len(dst) <= n*h {
		return
	}
	mean := make([]float64, h)
	for r := 0; r < n; r++ {
		for c := 0; c < h; c++ {
			mean[c] += float64(dst[r*h+c])
		}
	}
	for r := n; r < len(dst)/h; r++ {
		for c := 0; c < h; c++ {
			dst[r*h+c] = float32(mean[c] / float64(n))
		}
	}
}

// grownConfig is c with n more vocabulary rows (config.json's vocab_size
// follows).
func grownConfig(c *Config, n int) *Config {
	g := *c
	g.Raw = map[string]any{}
	for k, v := range c.Raw {
		g.Raw[k] = v
	}
	g.Vocab += n
	g.Raw["vocab_size"] = g.Vocab
	return &g
}

// HasNonFinite reports whether any parameter is NaN or infinite (for the
// bf16 ones: after rounding, checked when they were uploaded).
func (m *Model) HasNonFinite() bool {
	return m.halfNonFinite || HasNonFinite(m.BE, m.Params)
}

// Tensor is the view of a parameter tensor, float32 or (HalfHeld) bf16.
func (m *Model) Tensor(name string) (kernels.Buf, bool) {
	i, ok := m.Layout.index[name]
	if !ok {
		return kernels.Buf{}, false
	}
	return m.tensorBuf(i), true
}

// HalfHeld reports whether the model holds some of its tensors in bf16.
func (m *Model) HalfHeld() bool { return m.Half.N > 0 }

// tensorBuf is the view of layout tensor i.
func (m *Model) tensorBuf(i int) kernels.Buf {
	n := m.Layout.Specs[i].Elements()
	if m.place == nil {
		return m.Params.Slice(m.Layout.Offsets[i], n)
	}
	if off := m.place[i]; off >= 0 {
		return m.Params.Slice(off, n)
	}
	return m.Half.Slice(^m.place[i], n)
}

// OpenSource reads the float32 values the model was loaded with (export
// names, as ExportSpecs) until closed: for a LoadFrozen model out of one
// reader of the source files (opened here, its headers parsed once), else
// from the device.
func (m *Model) OpenSource() (safetensors.Fetch, func() error, error) {
	if m.source == nil {
		return m.ParamFetch(), func() error { return nil }, nil
	}
	r, err := safetensors.Open(m.source.dir)
	if err != nil {
		return nil, nil, err
	}
	fetch := func(name string, dst []float32) error {
		if name == LMHeadName && m.Cfg.TieEmbeddings {
			name = EmbedName
		}
		return m.source.read(r, name, dst)
	}
	return fetch, r.Close, nil
}
