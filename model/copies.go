package model

import "github.com/dllm-dev/dllm/kernels"

// Full fine-tuning on a GPU with bf16 matmuls casts each weight to bf16
// before each product that reads it: three times a step per linear (the
// forward, the input gradient, and with --recompute the forward again).
// Instead EnableGrads keeps one bf16 copy of every such weight, made again
// by ParamsWritten after each update, and the products read the copies:
// the same bf16 values, so the same results bit for bit. Whoever writes the
// parameters of a model with copies calls ParamsWritten (convert's AdamW
// does; loading weights does).

// copyTensors are the weights with a bf16 copy in full fine-tuning: those
// a frozen base holds in bf16 (halfTensors) and, for tied embeddings, the
// matrix the LM head reads (the gather keeps the float32 table).
func copyTensors(c *Config, b *blocks) map[string]bool {
	h := halfTensors(c, b)
	if c.TieEmbeddings {
		h[EmbedName] = true
	}
	return h
}

// enableCopies allocates and fills the bf16 copies when the backend holds
// bf16 weights (and the model is not a frozen one).
func (m *Model) enableCopies() {
	bw, ok := m.BE.(kernels.BF16Weights)
	if !ok || m.noCopies || m.place != nil || m.lora != nil || m.copies.N > 0 {
		return
	}
	h := copyTensors(m.Cfg, &blocks{Layers: m.Layers})
	var n int
	var offs []int
	var ins []kernels.Buf
	for i, s := range m.Layout.Specs {
		if h[s.Name] {
			offs = append(offs, pack(&n, s.Elements()))
			ins = append(ins, m.tensorBuf(i))
		}
	}
	if n == 0 {
		return
	}
	if m.copies, ok = bw.AllocBF16(n); !ok {
		return
	}
	m.copyIn = ins
	for j, in := range ins {
		m.copyOut = append(m.copyOut, m.copies.Slice(offs[j], in.N))
	}
	// Point the linears at their copies (W views match by address).
	for _, l := range m.allLinears() {
		for j, in := range m.copyIn {
			if l.W.Dev == in.Dev && l.W.N == in.N {
				l.W16 = m.copyOut[j]
			}
		}
	}
	m.ParamsWritten()
}

// allLinears are the head and every layer's linears.
func (m *Model) allLinears() []*Linear {
	lins := []*Linear{&m.Head}
	for _, ly := range m.Layers {
		lins = append(lins, ly.Linears()...)
	}
	return lins
}

// SetBF16Copies turns the bf16 copies on (the default: EnableGrads makes
// them) or off (--bf16-copies off: each product casts its weight, the same
// values, 2 bytes per weight less). Off frees copies already made.
func (m *Model) SetBF16Copies(on bool) {
	m.noCopies = !on
	switch {
	case on && m.Grads.N > 0:
		m.enableCopies()
	case !on && m.copies.N > 0:
		for _, l := range m.allLinears() {
			l.W16 = kernels.Buf{}
		}
		m.BE.Free(m.copies)
		m.copies, m.copyIn, m.copyOut = kernels.Buf{}, nil, nil
	}
}

// ParamsWritten remakes the bf16 copies from the parameters (nothing
// without copies). Call it after anything writes m.Params.
func (m *Model) ParamsWritten() {
	for j, in := range m.copyIn {
		m.BE.Copy(m.copyOut[j], in)
	}
}

// BF16Copies is the number of values held in bf16 copies.
func (m *Model) BF16Copies() int { return m.copies.N }
