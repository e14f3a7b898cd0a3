package kernelcheck

import (
	"fmt"

	"github.com/dllm-dev/dllm/kernels"
)

type attnShape struct {
	B, L, H, KV, HD int
}

// visRules are every visibility mode for a row of length L.
func (h *harness) visRules(L int) []kernels.Visibility {
	return []kernels.Visibility{
		{Mode: kernels.Causal},
		{Mode: kernels.Bidirectional},
		{Mode: kernels.Annealed, Ratio: 0.35, Seed: h.rng.Uint64()},
		{Mode: kernels.Block, Block: 5},
		{Mode: kernels.Block, Block: 16},
		{Mode: kernels.BlockDiffusion, Block: 4, Half: max(L/2, 1)},
	}
}

func visName(v kernels.Visibility) string {
	s := v.Mode.String()
	switch v.Mode {
	case kernels.Block:
		s += fmt.Sprintf("(%d)", v.Block)
	case kernels.BlockDiffusion:
		s += fmt.Sprintf("(%d)", v.Block)
	case kernels.Annealed:
		s += fmt.Sprintf("(%.2f)", v.Ratio)
	}
	if v.DocMask {
		s += "+docs"
	}
	return s
}

// packedDocs draws document ids for B rows of n positions: runs of
// increasing ids, as packing does.
func (h *harness) packedDocs(B, n int) []int32 {
	d := make([]int32, B*n)
	for b := 0; b < B; b++ {
		id := int32(0)
		for i := 0; i < n; i++ {
			if i > 0 && h.rng.IntN(max(n/3, 2)) == 0 {
				id++
			}
			d[b*n+i] = id
		}
	}
	return d
}

func checkAttention(h *harness) {
	if h.cfg.Matmul == "bf16" {
		checkAttentionBF16(h)
		return
	}
	shapes := []attnShape{{2, 24, 4, 2, 16}, {1, 37, 3, 1, 8}, {2, 33, 2, 2, 64}, {1, 20, 2, 1, 100}, {1, 17, 2, 2, 256}}
	if !h.cfg.Small {
		shapes = append(shapes, attnShape{2, 256, 14, 2, 64}, attnShape{1, 512, 4, 4, 128}, attnShape{4, 100, 8, 8, 8},
			attnShape{1, 64, 2, 1, 256})
	}
	for si, s := range shapes {
		for _, vis := range h.visRules(s.L) {
			for _, docs := range []bool{false, true} {
				// The large shapes once with documents, once without, over the modes.
				if docs && si > 1 && vis.Mode != kernels.Causal && vis.Mode != kernels.Annealed {
					continue
				}
				vis.DocMask = docs
				h.attentionCase(s, vis, TolAttention)
			}
		}
	}
	h.kvCacheCases(nil, TolAttention)
}

// checkAttentionBF16 is attention with the dut in bf16 mode, where head
// sizes 64 and 128 run on the tensor cores (kernels/cuda): every rule with
// and without documents, GQA, lengths that are no multiple of a tile, and
// the KV-cache forward, against the float32 reference.
func checkAttentionBF16(h *harness) {
	shapes := []attnShape{{2, 80, 4, 2, 64}, {1, 70, 2, 1, 128}}
	if !h.cfg.Small {
		shapes = append(shapes, attnShape{2, 512, 14, 2, 64}, attnShape{1, 1024, 4, 4, 128}, attnShape{1, 300, 8, 2, 128})
	}
	for si, s := range shapes {
		for _, vis := range h.visRules(s.L) {
			for _, docs := range []bool{false, true} {
				if docs && si > 1 && vis.Mode != kernels.Causal && vis.Mode != kernels.Annealed {
					continue
				}
				vis.DocMask = docs
				h.attentionCase(s, vis, TolAttentionBF16)
			}
		}
	}
	h.kvCacheCases([]kvShape{{3, 1, 30, 31, 2, 1, 64}, {2, 20, 50, 80, 4, 2, 128}}, TolAttentionBF16)
}

func (h *harness) attentionCase(s attnShape, vis kernels.Visibility, tol float64) {
	d := kernels.AttnDims{B: s.B, Lq: s.L, Lk: s.L, Heads: s.H, KVHeads: s.KV, HeadDim: s.HD}
	shape := fmt.Sprintf("B%d L%d H%d/%d hd%d %s", s.B, s.L, s.H, s.KV, s.HD, visName(vis))
	T := s.B * s.L
	qn, kn := T*s.H*s.HD, T*s.KV*s.HD
	rq, dq := h.pair(h.randn(qn, 1))
	rk, dk := h.pair(h.randn(kn, 1))
	rv, dv := h.pair(h.randn(kn, 1))
	rdoc, ddoc := h.pairInt(h.packedDocs(s.B, s.L))
	ro, do := h.pair(nans(qn))
	rl, dl := h.pair(nans(T * s.H))
	h.ref.Attention(ro, rl, rq, rk, rv, d, vis, rdoc)
	h.dut.Attention(do, dl, dq, dk, dv, d, vis, ddoc)
	h.compare("Attention out", shape, tol, ro, do)
	h.compare("Attention lse", shape, tol, rl, dl)
	// The backward from the reference's out and lse on both.
	out, lse := make([]float32, qn), make([]float32, T*s.H)
	h.ref.Download(out, ro)
	h.ref.Download(lse, rl)
	h.dut.Upload(do, out)
	h.dut.Upload(dl, lse)
	rg, dg := h.pair(h.randn(qn, 1))
	rdq, ddq := h.pair(nans(qn))
	rdk, ddk := h.pair(nans(kn))
	rdv, ddv := h.pair(nans(kn))
	h.ref.AttentionBackward(rdq, rdk, rdv, rg, rq, rk, rv, ro, rl, d, vis, rdoc)
	h.dut.AttentionBackward(ddq, ddk, ddv, dg, dq, dk, dv, do, dl, d, vis, ddoc)
	h.compare("AttentionBackward dq", shape, tol, rdq, ddq)
	h.compare("AttentionBackward dk", shape, tol, rdk, ddk)
	h.compare("AttentionBackward dv", shape, tol, rdv, ddv)
	h.done()
}

type kvShape struct{ B, Lq, QOff, KStride, H, KV, HD int }

// kvCacheCases run the forward over a KV cache: Lq new queries at QOff of
// rows of KStride cached positions, Lk = QOff + Lq of them used (nil
// shapes: the fp32 set).
func (h *harness) kvCacheCases(shapes []kvShape, tol float64) {
	if shapes == nil {
		shapes = []kvShape{{2, 8, 24, 40, 4, 2, 16}, {3, 1, 30, 31, 2, 1, 64}}
		if !h.cfg.Small {
			shapes = append(shapes, kvShape{2, 32, 480, 512, 14, 2, 64})
		}
	}
	for _, s := range shapes {
		Lk := s.QOff + s.Lq
		rules := []kernels.Visibility{{Mode: kernels.Causal}, {Mode: kernels.Bidirectional},
			{Mode: kernels.Block, Block: 8}, {Mode: kernels.Annealed, Ratio: 0.5, Seed: h.rng.Uint64()},
			{Mode: kernels.Causal, DocMask: true}, {Mode: kernels.Block, Block: 8, DocMask: true}}
		for _, vis := range rules {
			d := kernels.AttnDims{B: s.B, Lq: s.Lq, Lk: Lk, QOff: s.QOff, KStride: s.KStride, Heads: s.H, KVHeads: s.KV, HeadDim: s.HD}
			shape := fmt.Sprintf("B%d Lq%d QOff%d Lk%d stride%d H%d/%d hd%d %s", s.B, s.Lq, s.QOff, Lk, s.KStride, s.H, s.KV, s.HD, visName(vis))
			qn, kn := s.B*s.Lq*s.H*s.HD, s.B*s.KStride*s.KV*s.HD
			rq, dq := h.pair(h.randn(qn, 1))
			rk, dk := h.pair(h.randn(kn, 1))
			rv, dv := h.pair(h.randn(kn, 1))
			rdoc, ddoc := h.pairInt(h.packedDocs(s.B, s.KStride))
			ro, do := h.pair(nans(qn))
			rl, dl := h.pair(nans(s.B * s.Lq * s.H))
			h.ref.Attention(ro, rl, rq, rk, rv, d, vis, rdoc)
			h.dut.Attention(do, dl, dq, dk, dv, d, vis, ddoc)
			h.compare("Attention KV-cache out", shape, tol, ro, do)
			h.compare("Attention KV-cache lse", shape, tol, rl, dl)
			h.done()
		}
	}
}
