package model

import (
	"github.com/dllm-dev/dllm/kernels"
)

// The decoder layer is made of blocks, each a forward/backward pair over
// views of the model's flat buffers, as llm.c pairs its layers:
//
//	Layer     = Norm (input_layernorm) -> Attention -> + residual
//	          -> Norm (post_attention_layernorm) -> FFN -> + residual
//	Attention = Linear q, k, v -> [Norm q, k] -> RoPE -> attention -> Linear o
//	DenseFFN  = Linear gate, up -> SwiGLU -> Linear down
//
// Every block lists its tensors in one table of Param rows (suffix, shape,
// where the views go): that table is the checkpoint's expected tensors
// (Config.Tensors, Config.Check), the parameter layout (Layout) and the
// parameter and gradient views (Model.bind). Blocks list their activations
// the same way (Act rows, kept for the backward; scratch rows, backward
// temporaries shared by every layer), and NewActivations and the memory
// plan size one arena from those rows.
//
// A new FFN type (a sparse router + experts) is a type implementing FFN in
// its own file, chosen in newFFN (below) from the config: its Params rows
// name its tensors, its Acts and Scratch rows its buffers, and nothing else
// changes. An adapter (LoRA) implements Adapter and is set on the Linear
// blocks it wraps (Layer.Linears lists them); Linear.Frozen skips the base
// weight's gradient.

// Param is one row of a block's tensor table: the tensor's name after the
// layer prefix (or the whole name for the model-level tensors), its shape,
// and where the block keeps its view of the parameters (W) and of the
// gradients (G).
type Param struct {
	Suffix string
	Shape  []int
	W, G   *kernels.Buf
}

// Act is one row of an activation table: a buffer of N floats and the field
// that views it.
type Act struct {
	Name string
	N    int
	Buf  *kernels.Buf
}

// Pass is what every block of one forward or backward shares: the backend,
// the batch's token count and positions, the attention call's shape and
// rule, and during cached decoding the KV cache.
type Pass struct {
	BE       kernels.Backend
	T        int
	Eps      float32
	Pos      kernels.IBuf
	Docs     kernels.IBuf
	Vis      kernels.Visibility
	Dims     kernels.AttnDims
	Cos, Sin kernels.Buf
	Cache    *KVCache // nil outside cached decoding
	QOff     int
	B, L     int
	Router   *routerStats // MoE models: the routing statistics of this pass
}

// IntAct is a row of int32 activations (the MoE routing), kept like Act
// rows by blocks that implement IntActs(T int) []IntAct.
type IntAct struct {
	Name string
	N    int
	Buf  *kernels.IBuf
}

type intActer interface{ IntActs(T int) []IntAct }

// Adapter adds a trainable term to a Linear's output (LoRA: (alpha/r) B A x).
// Forward adds it to out; Backward adds its input gradient to dx (already
// holding the base weight's) and accumulates its own parameters' gradients.
// It keeps what its backward needs itself.
type Adapter interface {
	Forward(be kernels.Backend, out, x kernels.Buf, rows int)
	Backward(be kernels.Backend, dx, dout, x kernels.Buf, rows int)
}

// Linear is out = x W^T (+ b), W Out x In. Its backward writes (or adds to)
// dx and accumulates dW and db, except when Frozen: then the weight and
// bias get no gradient.
type Linear struct {
	Name    string // e.g. "self_attn.q_proj"
	In, Out int
	Bias    bool
	W, B    kernels.Buf
	DW, DB  kernels.Buf
	Frozen  bool
	Adapter Adapter
	// W16, when set, is a bf16 copy of W that the products read instead
	// (Model.EnableGrads on a bf16-matmul GPU; remade after every update).
	W16 kernels.Buf
}

// mw is the weight the products read: the bf16 copy when there is one.
func (l *Linear) mw() kernels.Buf {
	if l.W16.N > 0 {
		return l.W16
	}
	return l.W
}

// Params is the linear's table: weight, and bias when it has one.
func (l *Linear) Params() []Param {
	ps := []Param{{l.Name + ".weight", []int{l.Out, l.In}, &l.W, &l.DW}}
	if l.Bias {
		ps = append(ps, Param{l.Name + ".bias", []int{l.Out}, &l.B, &l.DB})
	}
	return ps
}

// Forward computes out (rows x Out) from x (rows x In).
func (l *Linear) Forward(be kernels.Backend, out, x kernels.Buf, rows int) {
	be.MatMul(out, x, l.mw(), rows, l.Out, l.In, false, true, 0)
	if l.Bias {
		be.AddBias(out, l.B, rows, l.Out)
	}
	if l.Adapter != nil {
		l.Adapter.Forward(be, out, x, rows)
	}
}

// castShared returns the first n values of x cast to bf16 once
// (kernels.BF16Cast) for several products that read them, instead of each
// casting them again: the same values. It returns x itself where products
// are not made in bf16 or one of ls has an adapter (which reads x as
// float32). freeShared gives the copy back, after the products are
// enqueued.
func castShared(be kernels.Backend, x kernels.Buf, n int, ls ...*Linear) kernels.Buf {
	bc, ok := be.(kernels.BF16Cast)
	if !ok || x.Half || n <= 0 {
		return x
	}
	for _, l := range ls {
		if l.Adapter != nil {
			return x
		}
	}
	if h, ok := bc.CastBF16(x.Slice(0, n)); ok {
		return h
	}
	return x
}

// sharedInputs are the linears of a layer whose input is cast once for
// the group that reads it (castShared): q, k, v; gate and up; a sparse
// FFN's router with the shared expert's gate, each expert's gate and up.
// The memory plan counts the bf16 input held through their backward.
func (ly *Layer) sharedInputs() map[*Linear]bool {
	s := map[*Linear]bool{&ly.Attn.Q: true, &ly.Attn.K: true, &ly.Attn.V: true}
	switch f := ly.FFN.(type) {
	case *DenseFFN:
		s[&f.Gate], s[&f.Up] = true, true
	case *SparseFFN:
		if f.SharedGate != nil {
			s[&f.Router], s[f.SharedGate] = true, true
		}
		for _, e := range f.Experts {
			s[&e.Gate], s[&e.Up] = true, true
		}
	}
	return s
}

func freeShared(be kernels.Backend, h, x kernels.Buf) {
	if h.Half && !x.Half {
		be.Free(h)
	}
}

// Backward computes dx = dout W (added to dx when accumulate) and, unless
// Frozen, accumulates dW += dout^T x and db += column sums of dout.
func (l *Linear) Backward(be kernels.Backend, dx, dout, x kernels.Buf, rows int, accumulate bool) {
	l.backward(be, dx, dout, x, x, rows, accumulate)
}

// backward is Backward with xm, x or its bf16 copy (castShared), as the
// weight gradient's operand; dout, read by both products, is cast once.
func (l *Linear) backward(be kernels.Backend, dx, dout, x, xm kernels.Buf, rows int, accumulate bool) {
	var beta float32
	if accumulate {
		beta = 1
	}
	dm := dout
	if !l.Frozen {
		dm = castShared(be, dout, rows*l.Out)
	}
	be.MatMul(dx, dm, l.mw(), rows, l.In, l.Out, false, false, beta)
	if !l.Frozen {
		be.MatMul(l.DW, dm, xm, l.Out, l.In, rows, true, false, 1)
		freeShared(be, dm, dout)
		if l.Bias {
			be.BiasBackward(l.DB, dout, rows, l.Out)
		}
	}
	if l.Adapter != nil {
		l.Adapter.Backward(be, dx, dout, x, rows)
	}
}

// Norm is RMSNorm over rows of Dim values with a learned scale.
type Norm struct {
	Name  string // e.g. "input_layernorm"
	Dim   int
	W, DW kernels.Buf
}

// Params is the norm's table.
func (n *Norm) Params() []Param {
	return []Param{{n.Name + ".weight", []int{n.Dim}, &n.W, &n.DW}}
}

// Forward normalises x into out, keeping 1/rms per row in rstd.
func (n *Norm) Forward(p *Pass, out, rstd, x kernels.Buf, rows int) {
	p.BE.RMSNorm(out, rstd, x, n.W, rows, n.Dim, p.Eps)
}

// Backward adds the input gradient to dx and accumulates dW.
func (n *Norm) Backward(p *Pass, dx, dout, x, rstd kernels.Buf, rows int) {
	p.BE.RMSNormBackward(dx, n.DW, dout, x, n.W, rstd, rows, n.Dim)
}

// FFN is the feed-forward block of a layer: out = FFN(x) for T rows of
// hidden values. Forward writes out and keeps what Backward needs in its
// Acts buffers; Backward writes dx (not accumulated) and accumulates its
// parameters' gradients. Params, Acts and Scratch are its tables (tensor
// suffixes after the layer prefix; activation buffers kept per layer;
// backward temporaries shared by all layers), sized for T tokens.
type FFN interface {
	Params() []Param
	Acts(T int) []Act
	Scratch(T int) []Act
	Forward(p *Pass, out, x kernels.Buf)
	Backward(p *Pass, dx, dout, x kernels.Buf)
	// Linears lists the FFN's linear blocks (for adapters and freezing).
	Linears() []*Linear
}

// newFFN chooses layer l's FFN from the config.
func newFFN(c *Config, l int) FFN {
	if c.SparseLayer(l) {
		sparse := 0
		for i := 0; i < l; i++ {
			if c.SparseLayer(i) {
				sparse++
			}
		}
		return newSparseFFN(c, sparse)
	}
	return newDenseFFN(c.Hidden, c.Intermediate)
}

// DenseFFN is the SwiGLU MLP: down(silu(gate x) * up x).
type DenseFFN struct {
	Gate, Up, Down Linear
	I              int
	g, u, a        kernels.Buf // gate x, up x, silu(gate x) * up x
	dg, du, da     kernels.Buf
}

func newDenseFFN(H, I int) *DenseFFN {
	return &DenseFFN{I: I,
		Gate: Linear{Name: "mlp.gate_proj", In: H, Out: I},
		Up:   Linear{Name: "mlp.up_proj", In: H, Out: I},
		Down: Linear{Name: "mlp.down_proj", In: I, Out: H}}
}

// Params implements FFN.
func (f *DenseFFN) Params() []Param {
	return concat(f.Gate.Params(), f.Up.Params(), f.Down.Params())
}

// Acts implements FFN.
func (f *DenseFFN) Acts(T int) []Act {
	return []Act{{"mlp.gate", T * f.I, &f.g}, {"mlp.up", T * f.I, &f.u}, {"mlp.act", T * f.I, &f.a}}
}

// Scratch implements FFN.
func (f *DenseFFN) Scratch(T int) []Act {
	return []Act{{"mlp.dgate", T * f.I, &f.dg}, {"mlp.dup", T * f.I, &f.du}, {"mlp.dact", T * f.I, &f.da}}
}

// Linears implements FFN.
func (f *DenseFFN) Linears() []*Linear { return []*Linear{&f.Gate, &f.Up, &f.Down} }

// Forward implements FFN.
func (f *DenseFFN) Forward(p *Pass, out, x kernels.Buf) {
	T := p.T
	xs := castShared(p.BE, x, T*f.Gate.In, &f.Gate, &f.Up)
	f.Gate.Forward(p.BE, f.g, xs, T)
	f.Up.Forward(p.BE, f.u, xs, T)
	freeShared(p.BE, xs, x)
	p.BE.SwiGLU(f.a, f.g, f.u, T*f.I)
	f.Down.Forward(p.BE, out, f.a, T)
}

// Backward implements FFN.
func (f *DenseFFN) Backward(p *Pass, dx, dout, x kernels.Buf) {
	T := p.T
	f.Down.Backward(p.BE, f.da, dout, f.a, T, false)
	p.BE.SwiGLUBackward(f.dg, f.du, f.da, f.g, f.u, T*f.I)
	xs := x
	if !f.Gate.Frozen {
		xs = castShared(p.BE, x, T*f.Gate.In, &f.Gate, &f.Up)
	}
	f.Gate.backward(p.BE, dx, f.dg, x, xs, T, false)
	f.Up.backward(p.BE, dx, f.du, x, xs, T, true)
	freeShared(p.BE, xs, x)
}

// Attention is grouped-query self-attention with RoPE, optional q/k/v/o
// biases and optional per-head RMSNorm on q and k (qwen3).
type Attention struct {
	Q, K, V, O     Linear
	QNorm, KNorm   *Norm
	Heads, KVHeads int
	HeadDim        int

	q, k, v      kernels.Buf // projections; q and k rotated in place unless QKNorm
	qn, kn       kernels.Buf // QKNorm: normalised (then rotated) q and k
	rstdQ, rstdK kernels.Buf
	att, lse     kernels.Buf
	dq, dk, dv   kernels.Buf
	dqn, dkn     kernels.Buf
	datt         kernels.Buf
}

func newAttention(c *Config) *Attention {
	H, Q, KV := c.Hidden, c.QDim(), c.KVDim()
	a := &Attention{Heads: c.Heads, KVHeads: c.KVHeads, HeadDim: c.HeadDim,
		Q: Linear{Name: "self_attn.q_proj", In: H, Out: Q, Bias: c.QKVBias},
		K: Linear{Name: "self_attn.k_proj", In: H, Out: KV, Bias: c.QKVBias},
		V: Linear{Name: "self_attn.v_proj", In: H, Out: KV, Bias: c.QKVBias},
		O: Linear{Name: "self_attn.o_proj", In: Q, Out: H, Bias: c.OBias}}
	if c.QKNorm {
		a.QNorm = &Norm{Name: "self_attn.q_norm", Dim: c.HeadDim}
		a.KNorm = &Norm{Name: "self_attn.k_norm", Dim: c.HeadDim}
	}
	return a
}

func (a *Attention) qdim() int  { return a.Heads * a.HeadDim }
func (a *Attention) kvdim() int { return a.KVHeads * a.HeadDim }

// Params is the attention's table, in checkpoint order.
func (a *Attention) Params() []Param {
	ps := concat(a.Q.Params(), a.K.Params(), a.V.Params(), a.O.Params())
	if a.QNorm != nil {
		ps = concat(ps, a.QNorm.Params(), a.KNorm.Params())
	}
	return ps
}

// Acts are the buffers the backward reads.
func (a *Attention) Acts(T int) []Act {
	Q, KV := a.qdim(), a.kvdim()
	acts := []Act{{"attn.q", T * Q, &a.q}, {"attn.k", T * KV, &a.k}, {"attn.v", T * KV, &a.v},
		{"attn.out", T * Q, &a.att}, {"attn.lse", T * a.Heads, &a.lse}}
	if a.QNorm != nil {
		acts = append(acts, Act{"attn.qn", T * Q, &a.qn}, Act{"attn.kn", T * KV, &a.kn},
			Act{"attn.rstd_q", T * a.Heads, &a.rstdQ}, Act{"attn.rstd_k", T * a.KVHeads, &a.rstdK})
	}
	return acts
}

// Scratch are the backward's temporaries.
func (a *Attention) Scratch(T int) []Act {
	Q, KV := a.qdim(), a.kvdim()
	s := []Act{{"attn.dq", T * Q, &a.dq}, {"attn.dk", T * KV, &a.dk}, {"attn.dv", T * KV, &a.dv}, {"attn.dout", T * Q, &a.datt}}
	if a.QNorm != nil {
		s = append(s, Act{"attn.dqn", T * Q, &a.dqn}, Act{"attn.dkn", T * KV, &a.dkn})
	}
	return s
}

// Linears lists q, k, v and o.
func (a *Attention) Linears() []*Linear { return []*Linear{&a.Q, &a.K, &a.V, &a.O} }

// Forward computes out = o_proj(attention(x)) for layer l.
func (a *Attention) Forward(p *Pass, l int, out, x kernels.Buf) {
	be, T, hd, KV := p.BE, p.T, a.HeadDim, a.kvdim()
	xs := castShared(be, x, T*a.Q.In, &a.Q, &a.K, &a.V)
	a.Q.Forward(be, a.q, xs, T)
	a.K.Forward(be, a.k, xs, T)
	a.V.Forward(be, a.v, xs, T)
	freeShared(be, xs, x)
	qr, kr := a.q, a.k
	if a.QNorm != nil {
		a.QNorm.Forward(p, a.qn, a.rstdQ, a.q, T*a.Heads)
		a.KNorm.Forward(p, a.kn, a.rstdK, a.k, T*a.KVHeads)
		qr, kr = a.qn, a.kn
	}
	be.RoPE(qr, p.Pos, p.Cos, p.Sin, T, a.Heads, hd, false)
	be.RoPE(kr, p.Pos, p.Cos, p.Sin, T, a.KVHeads, hd, false)
	kk, vv := kr, a.v
	if c := p.Cache; c != nil {
		for b := 0; b < p.B; b++ {
			dst := (b*c.MaxLen + p.QOff) * KV
			be.Copy(c.K[l].Slice(dst, p.L*KV), kr.Slice(b*p.L*KV, p.L*KV))
			be.Copy(c.V[l].Slice(dst, p.L*KV), a.v.Slice(b*p.L*KV, p.L*KV))
		}
		kk, vv = c.K[l], c.V[l]
	}
	be.Attention(a.att, a.lse, qr, kk, vv, p.Dims, p.Vis, p.Docs)
	a.O.Forward(be, out, a.att, T)
}

// Backward writes dx from dout (the gradient of out) and accumulates the
// parameters' gradients.
func (a *Attention) Backward(p *Pass, dx, dout, x kernels.Buf) {
	be, T, hd := p.BE, p.T, a.HeadDim
	a.O.Backward(be, a.datt, dout, a.att, T, false)
	qr, kr, dqr, dkr := a.q, a.k, a.dq, a.dk
	if a.QNorm != nil {
		qr, kr, dqr, dkr = a.qn, a.kn, a.dqn, a.dkn
	}
	be.AttentionBackward(dqr, dkr, a.dv, a.datt, qr, kr, a.v, a.att, a.lse, p.Dims, p.Vis, p.Docs)
	be.RoPE(dqr, p.Pos, p.Cos, p.Sin, T, a.Heads, hd, true)
	be.RoPE(dkr, p.Pos, p.Cos, p.Sin, T, a.KVHeads, hd, true)
	if a.QNorm != nil {
		be.Zero(a.dq)
		be.Zero(a.dk)
		a.QNorm.Backward(p, a.dq, a.dqn, a.q, a.rstdQ, T*a.Heads)
		a.KNorm.Backward(p, a.dk, a.dkn, a.k, a.rstdK, T*a.KVHeads)
	}
	xs := x
	if !a.Q.Frozen {
		xs = castShared(be, x, T*a.Q.In, &a.Q, &a.K, &a.V)
	}
	a.Q.backward(be, dx, a.dq, x, xs, T, false)
	a.K.backward(be, dx, a.dk, x, xs, T, true)
	a.V.backward(be, dx, a.dv, x, xs, T, true)
	freeShared(be, xs, x)
}

// Layer is one decoder layer: out = h + FFN(norm2(h)), h = x + Attn(norm1(x)).
type Layer struct {
	InNorm, PostNorm Norm
	Attn             *Attention
	FFN              FFN

	xn1, rstd1 kernels.Buf
	hmid       kernels.Buf // x + attention output
	xn2, rstd2 kernels.Buf
}

func newLayer(c *Config, l int) *Layer {
	return &Layer{InNorm: Norm{Name: "input_layernorm", Dim: c.Hidden}, PostNorm: Norm{Name: "post_attention_layernorm", Dim: c.Hidden},
		Attn: newAttention(c), FFN: newFFN(c, l)}
}

// Params is the layer's table in checkpoint (and parameter buffer) order.
func (ly *Layer) Params() []Param {
	return concat(ly.InNorm.Params(), ly.Attn.Params(), ly.PostNorm.Params(), ly.FFN.Params())
}

// Acts are the buffers of one layer that its backward reads, T tokens of
// hidden size H (the layer's input is kept by the model, not here).
func (ly *Layer) Acts(T, H int) []Act {
	own := []Act{{"xn1", T * H, &ly.xn1}, {"rstd1", T, &ly.rstd1}, {"hmid", T * H, &ly.hmid},
		{"xn2", T * H, &ly.xn2}, {"rstd2", T, &ly.rstd2}}
	return concat(own, ly.Attn.Acts(T), ly.FFN.Acts(T))
}

// Scratch are the backward temporaries of a layer.
func (ly *Layer) Scratch(T int) []Act { return concat(ly.Attn.Scratch(T), ly.FFN.Scratch(T)) }

// Linears lists every linear block of the layer.
func (ly *Layer) Linears() []*Linear { return append(ly.Attn.Linears(), ly.FFN.Linears()...) }

// Forward computes out (T x H) from x for layer l.
func (ly *Layer) Forward(p *Pass, l int, out, x kernels.Buf, H int) {
	be, T := p.BE, p.T
	ly.InNorm.Forward(p, ly.xn1, ly.rstd1, x, T)
	ly.Attn.Forward(p, l, ly.hmid, ly.xn1)
	be.Add(ly.hmid, ly.hmid, x, T*H)
	ly.PostNorm.Forward(p, ly.xn2, ly.rstd2, ly.hmid, T)
	ly.FFN.Forward(p, out, ly.xn2)
	be.Add(out, out, ly.hmid, T*H)
}

// Backward turns dh, the gradient of the layer's output, into the gradient
// of its input x (in place), using dx as scratch.
func (ly *Layer) Backward(p *Pass, dh, dx, x kernels.Buf) {
	T := p.T
	// out = hmid + FFN(xn2): dh is d(out), and keeps flowing to hmid.
	ly.FFN.Backward(p, dx, dh, ly.xn2)
	ly.PostNorm.Backward(p, dh, dx, ly.hmid, ly.rstd2, T)
	// hmid = x + attention(xn1): dh is d(hmid), and keeps flowing to x.
	ly.Attn.Backward(p, dx, dh, ly.xn1)
	ly.InNorm.Backward(p, dh, dx, x, ly.rstd1, T)
}

func concat[E any](lists ...[]E) []E {
	var out []E
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}
