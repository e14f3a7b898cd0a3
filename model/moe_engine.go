package model

import (
	"fmt"

	"github.com/dllm-dev/dllm/kernels"
)

// expert is one SwiGLU MLP of a sparse layer.
type expert struct {
	Gate, Up, Down Linear
	I              int
}

func newExpert(prefix string, m *MoE, H, I int) *expert {
	return &expert{I: I,
		Gate: Linear{Name: prefix + m.gateName, In: H, Out: I},
		Up:   Linear{Name: prefix + m.upName, In: H, Out: I},
		Down: Linear{Name: prefix + m.downName, In: I, Out: H}}
}

// SparseFFN is the mixture-of-experts FFN (see MoE): a router, Experts
// SwiGLU experts and, for qwen2_moe, a shared expert behind a sigmoid gate.
// The T*KOut assignments of a batch are sorted by expert (MoEDispatch), the
// inputs gathered, each expert runs one matmul per projection over its
// group of rows, and MoECombine sums each token's weighted outputs in order
// (no scatter, deterministic). The shared expert is group Experts, whose
// group is every token. Dropless: the buffers hold the worst case, every
// token in one expert.
type SparseFFN struct {
	M          *MoE
	H          int
	Sparse     int // index of the layer among the sparse layers
	Router     Linear
	SharedGate *Linear   // qwen2_moe
	Experts    []*expert // Groups(): the shared expert last

	logits, slog, probs, topW kernels.Buf
	xg, y                     kernels.Buf // slots x H: gathered inputs, expert outputs
	g, u, a                   kernels.Buf // group e's rows start at gOff(e)
	topIdx, offsets           kernels.IBuf
	slotRow, slotOf           kernels.IBuf
	dy, dxg, dg, du, da       kernels.Buf
	dw, dlogits, dslog        kernels.Buf
	off                       []int32 // host copy of offsets
}

func newSparseFFN(c *Config, sparse int) *SparseFFN {
	m, H := c.MoE, c.Hidden
	f := &SparseFFN{M: m, H: H, Sparse: sparse, Router: Linear{Name: m.Prefix + "gate", In: H, Out: m.Experts},
		off: make([]int32, m.Groups()+1)}
	for e := 0; e < m.Experts; e++ {
		f.Experts = append(f.Experts, newExpert(fmt.Sprintf("%sexperts.%d.", m.Prefix, e), m, H, m.Intermediate))
	}
	if m.Shared() {
		f.Experts = append(f.Experts, newExpert(m.Prefix+"shared_expert.", m, H, m.SharedIntermediate))
		f.SharedGate = &Linear{Name: m.Prefix + "shared_expert_gate", In: H, Out: 1}
	}
	return f
}

// Params implements FFN, in HF's module order: gate, experts, shared
// expert, shared expert gate.
func (f *SparseFFN) Params() []Param {
	ps := f.Router.Params()
	for _, e := range f.Experts {
		ps = concat(ps, e.Gate.Params(), e.Up.Params(), e.Down.Params())
	}
	if f.SharedGate != nil {
		ps = concat(ps, f.SharedGate.Params())
	}
	return ps
}

// Linears implements FFN.
func (f *SparseFFN) Linears() []*Linear {
	ls := []*Linear{&f.Router}
	for _, e := range f.Experts {
		ls = append(ls, &e.Gate, &e.Up, &e.Down)
	}
	if f.SharedGate != nil {
		ls = append(ls, f.SharedGate)
	}
	return ls
}

// gLen is the length of g, u and a for T tokens.
func (f *SparseFFN) gLen(T int) int { return T*f.M.TopK*f.M.Intermediate + T*f.M.SharedIntermediate }

// gOff is the offset of group e's rows in g, u and a.
func (f *SparseFFN) gOff(e, T int) int {
	if e == f.M.Experts {
		return T * f.M.TopK * f.M.Intermediate
	}
	return int(f.off[e]) * f.M.Intermediate
}

// Acts implements FFN.
func (f *SparseFFN) Acts(T int) []Act {
	m, S, gl := f.M, T*f.M.KOut(), f.gLen(T)
	acts := []Act{{"moe.logits", T * m.Experts, &f.logits}, {"moe.probs", T * m.Experts, &f.probs}, {"moe.weights", S, &f.topW},
		{"moe.x", S * f.H, &f.xg}, {"moe.gate", gl, &f.g}, {"moe.up", gl, &f.u}, {"moe.act", gl, &f.a}, {"moe.y", S * f.H, &f.y}}
	if m.Shared() {
		acts = append(acts, Act{"moe.shared_logit", T, &f.slog})
	}
	return acts
}

// IntActs are the routing's int buffers, kept like Acts.
func (f *SparseFFN) IntActs(T int) []IntAct {
	S := T * f.M.KOut()
	return []IntAct{{"moe.experts", S, &f.topIdx}, {"moe.offsets", f.M.Groups() + 1, &f.offsets},
		{"moe.slot_rows", S, &f.slotRow}, {"moe.slots", S, &f.slotOf}}
}

// Scratch implements FFN.
func (f *SparseFFN) Scratch(T int) []Act {
	m, S, gl := f.M, T*f.M.KOut(), f.gLen(T)
	s := []Act{{"moe.dy", S * f.H, &f.dy}, {"moe.dx", S * f.H, &f.dxg}, {"moe.dgate", gl, &f.dg}, {"moe.dup", gl, &f.du},
		{"moe.dact", gl, &f.da}, {"moe.dweights", S, &f.dw}, {"moe.dlogits", T * m.Experts, &f.dlogits}}
	if m.Shared() {
		s = append(s, Act{"moe.dshared_logit", T, &f.dslog})
	}
	return s
}

// Forward implements FFN.
func (f *SparseFFN) Forward(p *Pass, out, x kernels.Buf) {
	be, m, T, H := p.BE, f.M, p.T, f.H
	K := m.KOut()
	xs := x
	if f.SharedGate != nil {
		xs = castShared(be, x, T*H, &f.Router, f.SharedGate)
	}
	f.Router.Forward(be, f.logits, xs, T)
	if f.SharedGate != nil {
		f.SharedGate.Forward(be, f.slog, xs, T)
	}
	freeShared(be, xs, x)
	be.RouterTopK(f.topW, f.probs, f.topIdx, f.logits, f.slog, T, m.Experts, m.TopK, m.NormTopK)
	be.MoEDispatch(f.offsets, f.slotRow, f.slotOf, f.topIdx, T, K, m.Groups())
	be.DownloadInt(f.off, f.offsets)
	if st := p.Router; st != nil && !st.replay {
		st.add(be, f, T)
	}
	be.Embedding(f.xg, x, f.slotRow, T*K, H)
	for e, ex := range f.Experts {
		n := int(f.off[e+1] - f.off[e])
		if n == 0 {
			continue
		}
		xe, ye := f.xg.Slice(int(f.off[e])*H, n*H), f.y.Slice(int(f.off[e])*H, n*H)
		o := f.gOff(e, T)
		g, u, a := f.g.Slice(o, n*ex.I), f.u.Slice(o, n*ex.I), f.a.Slice(o, n*ex.I)
		xs := castShared(be, xe, n*H, &ex.Gate, &ex.Up)
		ex.Gate.Forward(be, g, xs, n)
		ex.Up.Forward(be, u, xs, n)
		freeShared(be, xs, xe)
		be.SwiGLU(a, g, u, n*ex.I)
		ex.Down.Forward(be, ye, a, n)
	}
	be.MoECombine(out, f.y, f.topW, f.slotOf, T, K, H, false)
}

// Backward implements FFN: through the combine to each expert's output and
// routing weight, the experts to their gathered inputs (summed back per
// token), the weights through the top-k and the softmax (plus the
// load-balancing loss) to the router.
func (f *SparseFFN) Backward(p *Pass, dx, dout, x kernels.Buf) {
	be, m, T, H := p.BE, f.M, p.T, f.H
	K := m.KOut()
	be.DownloadInt(f.off, f.offsets) // this batch's groups (another batch may have run since)
	be.MoECombineBackward(f.dy, f.dw, dout, f.y, f.topW, f.slotOf, T, K, H)
	for e, ex := range f.Experts {
		n := int(f.off[e+1] - f.off[e])
		if n == 0 {
			continue
		}
		s := int(f.off[e]) * H
		xe, dye, dxe := f.xg.Slice(s, n*H), f.dy.Slice(s, n*H), f.dxg.Slice(s, n*H)
		o := f.gOff(e, T)
		g, u, a := f.g.Slice(o, n*ex.I), f.u.Slice(o, n*ex.I), f.a.Slice(o, n*ex.I)
		dg, du, da := f.dg.Slice(o, n*ex.I), f.du.Slice(o, n*ex.I), f.da.Slice(o, n*ex.I)
		ex.Down.Backward(be, da, dye, a, n, false)
		be.SwiGLUBackward(dg, du, da, g, u, n*ex.I)
		xs := xe
		if !ex.Gate.Frozen {
			xs = castShared(be, xe, n*H, &ex.Gate, &ex.Up)
		}
		ex.Gate.backward(be, dxe, dg, xe, xs, n, false)
		ex.Up.backward(be, dxe, du, xe, xs, n, true)
		freeShared(be, xs, xe)
	}
	be.MoECombine(dx, f.dxg, kernels.Buf{}, f.slotOf, T, K, H, false)
	var aux kernels.Buf
	if st := p.Router; st != nil && st.coef != 0 {
		aux = st.auxGrad
	}
	be.RouterBackward(f.dlogits, f.dslog, f.dw, f.topW, f.probs, f.topIdx, aux, T, m.Experts, m.TopK, m.NormTopK)
	xs := x
	if f.SharedGate != nil && !f.Router.Frozen {
		xs = castShared(be, x, T*H, &f.Router, f.SharedGate)
	}
	f.Router.backward(be, dx, f.dlogits, x, xs, T, true)
	if f.SharedGate != nil {
		f.SharedGate.backward(be, dx, f.dslog, x, xs, T, true)
	}
	freeShared(be, xs, x)
}

// routerStats gathers one forward's routing over the sparse layers for the
// load-balancing loss and the per-expert counts.
type routerStats struct {
	experts, sparse int
	psum            kernels.Buf // Experts: column sums of probs over the sparse layers
	psumH           []float32
	counts          []int64 // per expert, summed over the sparse layers
	layerCounts     [][]int // per sparse layer and expert
	aux             float64
	auxGrad         kernels.Buf // Experts: coef * d(aux)/d(probs[e]), the same for every row
	auxGradH        []float32
	coef            float64
	replay          bool // a recomputed forward: counted already
}

func newRouterStats(c *Config, be kernels.Backend) *routerStats {
	E := c.MoE.Experts
	s := &routerStats{experts: E, sparse: len(c.SparseLayers()), psum: be.Alloc(E), psumH: make([]float32, E),
		counts: make([]int64, E), auxGrad: be.Alloc(E), auxGradH: make([]float32, E)}
	for range s.sparse {
		s.layerCounts = append(s.layerCounts, make([]int, E))
	}
	return s
}

func (s *routerStats) free(be kernels.Backend) {
	be.Free(s.psum)
	be.Free(s.auxGrad)
}

func (s *routerStats) start(be kernels.Backend) {
	be.Zero(s.psum)
	clear(s.counts)
	s.aux, s.replay = 0, false
}

// add counts one sparse layer's routing (the routed experts, not the shared one).
func (s *routerStats) add(be kernels.Backend, f *SparseFFN, T int) {
	be.BiasBackward(s.psum, f.probs, T, s.experts)
	for e := 0; e < s.experts; e++ {
		n := int(f.off[e+1] - f.off[e])
		s.counts[e] += int64(n)
		if f.Sparse < len(s.layerCounts) {
			s.layerCounts[f.Sparse][e] = n
		}
	}
}

// finish computes the load-balancing loss of the forward, transformers'
// load_balancing_loss_func over the concatenated sparse layers: with N the
// number of (layer, token) rows, f_e = (tokens routed to e, all k choices
// counted) / N and P_e the mean of p_e, aux = E * sum_e f_e P_e.
func (s *routerStats) finish(be kernels.Backend, T int) {
	be.Download(s.psumH, s.psum)
	N := float64(T * s.sparse)
	if N == 0 {
		return
	}
	var aux float64
	for e := range s.counts {
		aux += float64(s.counts[e]) / N * float64(s.psumH[e]) / N
	}
	s.aux = float64(s.experts) * aux
}

// uploadGrad sends coef * d(aux)/dp_e = coef * E * count_e / N^2.
func (s *routerStats) uploadGrad(be kernels.Backend, T int, coef float64) {
	s.coef = coef
	if coef == 0 {
		return
	}
	N := float64(T * s.sparse)
	for e := range s.auxGradH {
		s.auxGradH[e] = float32(coef * float64(s.experts) * float64(s.counts[e]) / (N * N))
	}
	be.Upload(s.auxGrad, s.auxGradH)
}

// AuxLoss is the router load-balancing loss of the last forward, without
// its coefficient (0 for a dense model).
func (a *Activations) AuxLoss() float64 {
	if a.router == nil {
		return 0
	}
	return a.router.aux
}

// ExpertCounts are the tokens routed to each expert in each sparse layer in
// the last forward (nil for a dense model). The slices are reused.
func (a *Activations) ExpertCounts() [][]int {
	if a.router == nil {
		return nil
	}
	return a.router.layerCounts
}
