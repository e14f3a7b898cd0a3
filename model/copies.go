package model

import "github.com/dllm-dev/dllm/kernels"

// Full fine-tuning on a GPU with bf16 matmuls casts each weight to bf16
// before each product that reads it: three times a step per linear (the
// forward, the input gradient, and with --recompute the forward again).
// Instead EnableGrads keeps one bf16 copy of every such weight, made again
// after each update, and the products read the copies: the same bf16
// values, so the same results bit for bit. Whoever writes the parameters
// of a model with copies calls ParamsWritten (loading weights does), or
// writes the copies of BF16Runs too (convert's AdamW with
// kernels.AdamWBF16).

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
	var offs, ins []int // each copy's offset in the copies, its tensor's in Params
	for i, s := range m.Layout.Specs {
		if h[s.Name] {
			offs = append(offs, pack(&n, s.Elements()))
			ins = append(ins, i)
		}
	}
	if n == 0 {
		return
	}
	if m.copies, ok = bw.AllocBF16(n); !ok {
		return
	}
	// Point the linears at their copies.
	at := map[string]kernels.Buf{}
	for j, i := range ins {
		at[m.Layout.Specs[i].Name] = m.copies.Slice(offs[j], m.Layout.Specs[i].Elements())
	}
	head := LMHeadName
	if m.Cfg.TieEmbeddings {
		head = EmbedName
	}
	m.Head.W16 = at[head]
	for i, ly := range m.Layers {
		for _, l := range ly.Linears() {
			l.W16 = at[LayerPrefix(i)+l.Name+".weight"]
		}
	}
	m.copyRuns = copyRuns(m.Layout, ins, offs, m.copies)
	m.ParamsWritten()
}

// copyRuns groups the copied tensors, layout tensors ins placed at offs in
// copies, into runs of neighbours in the layout that keep their distances
// in the copies: one cast each for ParamsWritten (the padding between them
// cast too, read by nobody).
func copyRuns(l *Layout, ins, offs []int, copies kernels.Buf) []BF16Run {
	var runs []BF16Run
	var dst int // the last run's offset in copies
	for j, i := range ins {
		src, n := l.Offsets[i], l.Specs[i].Elements()
		if k := len(runs) - 1; k >= 0 && ins[j-1] == i-1 && offs[j]-dst == src-runs[k].Src {
			runs[k].N = offs[j] + n - dst
			runs[k].Copy = copies.Slice(dst, runs[k].N)
			continue
		}
		dst = offs[j]
		runs = append(runs, BF16Run{src, n, copies.Slice(dst, n)})
	}
	return runs
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
		m.copies, m.copyRuns = kernels.Buf{}, nil
	}
}

// ParamsWritten remakes the bf16 copies from the parameters (nothing
// without copies). Call it after anything writes m.Params.
func (m *Model) ParamsWritten() {
	for _, r := range m.copyRuns {
		m.BE.Copy(r.Copy, m.Params.Slice(r.Src, r.N))
	}
}

// A BF16Run is a run of parameters with a bf16 copy: Params[Src:Src+N] is
// held rounded in Copy (N values).
type BF16Run struct {
	Src, N int
	Copy   kernels.Buf
}

// BF16Runs are the runs ParamsWritten casts, in the order of Params (none
// without copies; the model's own slice, made once: not to be changed). An
// update that writes every run itself, rounded as Copy rounds
// (kernels.AdamWBF16), need not call ParamsWritten.
func (m *Model) BF16Runs() []BF16Run { return m.copyRuns }

// BF16Copies is the number of values held in bf16 copies.
func (m *Model) BF16Copies() int { return m.copies.N }
