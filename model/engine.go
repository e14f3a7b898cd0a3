package model

import (
	"fmt"

	"github.com/dllm-dev/dllm/kernels"
)

// layerActs holds what one layer's backward needs from its forward.
type layerActs struct {
	res          kernels.Buf // layer input (T x H)
	xn1, rstd1   kernels.Buf
	q, k, v      kernels.Buf // projections; q and k are rotated in place unless QKNorm
	qn, kn       kernels.Buf // QKNorm: normalised (then rotated) q and k
	rstdQ, rstdK kernels.Buf
	att, lse     kernels.Buf
	hmid         kernels.Buf // res + attention output
	xn2, rstd2   kernels.Buf
	g, u, a      kernels.Buf // gate, up, silu(gate)*up
}

// Activations are the buffers of one batch shape, allocated once and reused
// by every step: nothing is allocated inside Forward, Loss or Backward.
type Activations struct {
	B, L, T  int
	Training bool

	// Host staging, filled by the caller and sent with Upload.
	IDs, Pos, Docs, Rows, Targets []int32
	Weights                       []float32
	// NRows is how many entries of Rows (and of Targets, Weights) are used:
	// logits are computed only for those rows. AllRows skips the gather.
	NRows   int
	AllRows bool
	// EmbedNoise (T x hidden), when UseNoise, is added to the embedding
	// output: LLaDA 2.0's noise on masked positions early in training.
	EmbedNoise []float32
	UseNoise   bool
	noise      kernels.Buf

	ids, pos, docs, rows, targets kernels.IBuf
	weights                       kernels.Buf

	layers         []*layerActs
	resA, resB     kernels.Buf // inference: residual ping-pong
	hFinal         kernels.Buf
	xf, rstdF      kernels.Buf
	xg             kernels.Buf // gathered rows of xf
	Logits         kernels.Buf // NRows x V (gradient after Loss with grad)
	loss, correct  kernels.Buf
	lossH, corrH   []float32
	dh, dx, dxg    kernels.Buf
	dq, dk, dv     kernels.Buf
	dqn, dkn, datt kernels.Buf
	dg, du, da     kernels.Buf
}

// NewActivations allocates buffers for batches of B rows of L tokens.
// Training keeps every layer's activations for the backward; otherwise
// one set is reused across layers.
func (m *Model) NewActivations(B, L int, training bool) *Activations {
	c, be := m.Cfg, m.BE
	T, H, I, Q, KV := B*L, c.Hidden, c.Intermediate, c.QDim(), c.KVDim()
	a := &Activations{B: B, L: L, T: T, Training: training,
		IDs: make([]int32, T), Pos: make([]int32, T), Docs: make([]int32, T), Rows: make([]int32, T),
		Targets: make([]int32, T), Weights: make([]float32, T), NRows: T, AllRows: true}
	for i := range a.Pos {
		a.Pos[i] = int32(i % L)
	}
	a.ids, a.pos, a.docs, a.rows, a.targets = be.AllocInt(T), be.AllocInt(T), be.AllocInt(T), be.AllocInt(T), be.AllocInt(T)
	a.weights = be.Alloc(T)
	newLayer := func() *layerActs {
		la := &layerActs{
			xn1: be.Alloc(T * H), rstd1: be.Alloc(T), q: be.Alloc(T * Q), k: be.Alloc(T * KV), v: be.Alloc(T * KV),
			att: be.Alloc(T * Q), lse: be.Alloc(T * c.Heads), hmid: be.Alloc(T * H), xn2: be.Alloc(T * H), rstd2: be.Alloc(T),
			g: be.Alloc(T * I), u: be.Alloc(T * I), a: be.Alloc(T * I),
		}
		if c.QKNorm {
			la.qn, la.kn = be.Alloc(T*Q), be.Alloc(T*KV)
			la.rstdQ, la.rstdK = be.Alloc(T*c.Heads), be.Alloc(T*c.KVHeads)
		}
		return la
	}
	if training {
		for l := 0; l < c.Layers; l++ {
			la := newLayer()
			la.res = be.Alloc(T * H)
			a.layers = append(a.layers, la)
		}
		a.hFinal = be.Alloc(T * H)
	} else {
		shared := newLayer()
		a.resA, a.resB = be.Alloc(T*H), be.Alloc(T*H)
		for l := 0; l < c.Layers; l++ {
			a.layers = append(a.layers, shared)
		}
	}
	a.xf, a.rstdF, a.xg = be.Alloc(T*H), be.Alloc(T), be.Alloc(T*H)
	a.Logits = be.Alloc(T * c.Vocab)
	a.loss, a.correct = be.Alloc(T), be.Alloc(T)
	a.lossH, a.corrH = make([]float32, T), make([]float32, T)
	if training {
		a.dh, a.dx, a.dxg = be.Alloc(T*H), be.Alloc(T*H), be.Alloc(T*H)
		a.dq, a.dk, a.dv, a.datt = be.Alloc(T*Q), be.Alloc(T*KV), be.Alloc(T*KV), be.Alloc(T*Q)
		if c.QKNorm {
			a.dqn, a.dkn = be.Alloc(T*Q), be.Alloc(T*KV)
		}
		a.dg, a.du, a.da = be.Alloc(T*I), be.Alloc(T*I), be.Alloc(T*I)
	}
	m.ensureRope(L)
	return a
}

// Free returns the buffers to the backend.
func (a *Activations) Free(be kernels.Backend) {
	seen := map[*layerActs]bool{}
	for _, la := range a.layers {
		if seen[la] {
			continue
		}
		seen[la] = true
		for _, b := range []kernels.Buf{la.res, la.xn1, la.rstd1, la.q, la.k, la.v, la.qn, la.kn, la.rstdQ, la.rstdK,
			la.att, la.lse, la.hmid, la.xn2, la.rstd2, la.g, la.u, la.a} {
			if b.N > 0 {
				be.Free(b)
			}
		}
	}
	for _, b := range []kernels.Buf{a.weights, a.noise, a.resA, a.resB, a.hFinal, a.xf, a.rstdF, a.xg, a.Logits, a.loss, a.correct,
		a.dh, a.dx, a.dxg, a.dq, a.dk, a.dv, a.dqn, a.dkn, a.datt, a.dg, a.du, a.da} {
		if b.N > 0 {
			be.Free(b)
		}
	}
	for _, b := range []kernels.IBuf{a.ids, a.pos, a.docs, a.rows, a.targets} {
		be.FreeInt(b)
	}
}

// Upload sends the host staging arrays to the backend.
func (a *Activations) Upload(be kernels.Backend) {
	be.UploadInt(a.ids, a.IDs)
	be.UploadInt(a.pos, a.Pos)
	be.UploadInt(a.docs, a.Docs)
	if !a.AllRows {
		be.UploadInt(a.rows.Slice(0, a.NRows), a.Rows[:a.NRows])
	}
	be.UploadInt(a.targets.Slice(0, a.NRows), a.Targets[:a.NRows])
	be.Upload(a.weights.Slice(0, a.NRows), a.Weights[:a.NRows])
	if a.UseNoise {
		if a.noise.N == 0 {
			a.noise = be.Alloc(len(a.EmbedNoise))
		}
		be.Upload(a.noise, a.EmbedNoise)
	}
}

func (a *Activations) resIn(l int) kernels.Buf {
	if a.Training {
		return a.layers[l].res
	}
	if l%2 == 0 {
		return a.resA
	}
	return a.resB
}

func (a *Activations) resOut(l int) kernels.Buf {
	if a.Training {
		if l+1 < len(a.layers) {
			return a.layers[l+1].res
		}
		return a.hFinal
	}
	return a.resIn(l + 1)
}

func (m *Model) attnDims(a *Activations) kernels.AttnDims {
	c := m.Cfg
	return kernels.AttnDims{B: a.B, Lq: a.L, Lk: a.L, Heads: c.Heads, KVHeads: c.KVHeads, HeadDim: c.HeadDim}
}

// Forward runs the decoder under vis on the uploaded batch and leaves the
// logits of the selected rows in a.Logits.
func (m *Model) Forward(a *Activations, vis kernels.Visibility) {
	m.forward(a, vis, nil, 0)
}

// KVCache keeps every layer's rotated keys and values of B rows of up to
// MaxLen positions, so that positions already computed are not recomputed
// (AR decoding, and finished blocks of block diffusion).
type KVCache struct {
	B, MaxLen int
	K, V      []kernels.Buf
}

// NewKVCache allocates a cache.
func (m *Model) NewKVCache(B, maxLen int) *KVCache {
	c := &KVCache{B: B, MaxLen: maxLen}
	for l := 0; l < m.Cfg.Layers; l++ {
		c.K = append(c.K, m.BE.Alloc(B*maxLen*m.Cfg.KVDim()))
		c.V = append(c.V, m.BE.Alloc(B*maxLen*m.Cfg.KVDim()))
	}
	m.ensureRope(maxLen)
	return c
}

// Free returns the cache's buffers.
func (c *KVCache) Free(be kernels.Backend) {
	for l := range c.K {
		be.Free(c.K[l])
		be.Free(c.V[l])
	}
}

// ForwardCached runs a.L new positions per row, at positions [qoff,
// qoff+a.L), writes their keys and values into the cache and attends over
// cached positions [0, qoff+a.L) under vis. a.Pos must hold the positions.
func (m *Model) ForwardCached(a *Activations, c *KVCache, qoff int, vis kernels.Visibility) {
	m.forward(a, vis, c, qoff)
}

func (m *Model) forward(a *Activations, vis kernels.Visibility, cache *KVCache, qoff int) {
	c, be, W := m.Cfg, m.BE, &m.W
	T, H, I, Q, KV, hd := a.T, c.Hidden, c.Intermediate, c.QDim(), c.KVDim(), c.HeadDim
	eps := float32(c.RMSNormEps)
	dims := m.attnDims(a)
	if cache != nil {
		dims.Lk, dims.QOff, dims.KStride = qoff+a.L, qoff, cache.MaxLen
	}
	be.Embedding(a.resIn(0), W.Embed, a.ids, T, H)
	if a.UseNoise {
		be.Add(a.resIn(0), a.resIn(0), a.noise, T*H)
	}
	for l := 0; l < c.Layers; l++ {
		la, lw := a.layers[l], &W.Layers[l]
		res, out := a.resIn(l), a.resOut(l)
		be.RMSNorm(la.xn1, la.rstd1, res, lw.InNorm, T, H, eps)
		linear(be, la.q, la.xn1, lw.Wq, lw.Bq, T, Q, H)
		linear(be, la.k, la.xn1, lw.Wk, lw.Bk, T, KV, H)
		linear(be, la.v, la.xn1, lw.Wv, lw.Bv, T, KV, H)
		qr, kr := la.q, la.k
		if c.QKNorm {
			be.RMSNorm(la.qn, la.rstdQ, la.q, lw.QNorm, T*c.Heads, hd, eps)
			be.RMSNorm(la.kn, la.rstdK, la.k, lw.KNorm, T*c.KVHeads, hd, eps)
			qr, kr = la.qn, la.kn
		}
		be.RoPE(qr, a.pos, m.ropeCos, m.ropeSin, T, c.Heads, hd, false)
		be.RoPE(kr, a.pos, m.ropeCos, m.ropeSin, T, c.KVHeads, hd, false)
		kk, vv := kr, la.v
		if cache != nil {
			for b := 0; b < a.B; b++ {
				dst := (b*cache.MaxLen + qoff) * KV
				be.Copy(cache.K[l].Slice(dst, a.L*KV), kr.Slice(b*a.L*KV, a.L*KV))
				be.Copy(cache.V[l].Slice(dst, a.L*KV), la.v.Slice(b*a.L*KV, a.L*KV))
			}
			kk, vv = cache.K[l], cache.V[l]
		}
		be.Attention(la.att, la.lse, qr, kk, vv, dims, vis, a.docs)
		linear(be, la.hmid, la.att, lw.Wo, lw.Bo, T, H, Q)
		be.Add(la.hmid, la.hmid, res, T*H)
		be.RMSNorm(la.xn2, la.rstd2, la.hmid, lw.PostNorm, T, H, eps)
		linear(be, la.g, la.xn2, lw.Gate, kernels.Buf{}, T, I, H)
		linear(be, la.u, la.xn2, lw.Up, kernels.Buf{}, T, I, H)
		be.SwiGLU(la.a, la.g, la.u, T*I)
		linear(be, out, la.a, lw.Down, kernels.Buf{}, T, H, I)
		be.Add(out, out, la.hmid, T*H)
	}
	final := a.resOut(c.Layers - 1)
	be.RMSNorm(a.xf, a.rstdF, final, W.Norm, T, H, eps)
	xs := a.xf
	if !a.AllRows {
		be.Embedding(a.xg, a.xf, a.rows, a.NRows, H)
		xs = a.xg
	}
	be.MatMul(a.Logits, xs, W.LMHead, a.NRows, c.Vocab, H, false, true, 0)
}

// linear: out = x w^T (+ b), x rows x in, w out x in.
func linear(be kernels.Backend, out, x, w, b kernels.Buf, rows, nout, nin int) {
	be.MatMul(out, x, w, rows, nout, nin, false, true, 0)
	if b.N > 0 {
		be.AddBias(out, b, rows, nout)
	}
}

// Loss is the weighted cross-entropy of the selected rows against Targets
// (-1 ignored) with Weights: it returns sum(w*CE) and the number of rows
// whose argmax is the target. With grad the logits become
// d(sum(w*CE)/norm)/dlogits, ready for Backward.
func (m *Model) Loss(a *Activations, norm float64, grad bool) (sum float64, correct int) {
	be := m.BE
	n := a.NRows
	be.CrossEntropy(a.loss, a.correct, a.Logits, a.targets, a.weights, n, m.Cfg.Vocab, float32(1/norm), grad)
	be.Download(a.lossH[:n], a.loss.Slice(0, n))
	be.Download(a.corrH[:n], a.correct.Slice(0, n))
	for i := 0; i < n; i++ {
		sum += float64(a.lossH[i])
		correct += int(a.corrH[i])
	}
	return sum, correct
}

// RowLosses are the per-row weighted losses of the last Loss call.
func (a *Activations) RowLosses() []float32 { return a.lossH[:a.NRows] }

// RowCorrect are the per-row argmax hits of the last Loss call.
func (a *Activations) RowCorrect() []float32 { return a.corrH[:a.NRows] }

// Backward accumulates parameter gradients into m.Grads from the logits
// gradient Loss left behind.
func (m *Model) Backward(a *Activations, vis kernels.Visibility) error {
	if !a.Training {
		return fmt.Errorf("model: Backward on inference activations")
	}
	m.EnableGrads()
	c, be, W, G := m.Cfg, m.BE, &m.W, &m.G
	T, H, I, Q, KV, hd, V := a.T, c.Hidden, c.Intermediate, c.QDim(), c.KVDim(), c.HeadDim, c.Vocab
	xs := a.xf
	if !a.AllRows {
		xs = a.xg
	}
	// logits = xs lm_head^T
	dxs := a.dx
	if !a.AllRows {
		dxs = a.dxg
	}
	be.MatMul(dxs, a.Logits, W.LMHead, a.NRows, H, V, false, false, 0)
	be.MatMul(G.LMHead, a.Logits, xs, V, H, a.NRows, true, false, 1)
	if !a.AllRows {
		be.Zero(a.dx)
		be.EmbeddingBackward(a.dx, a.dxg, a.rows, a.NRows, H)
	}
	be.Zero(a.dh)
	be.RMSNormBackward(a.dh, G.Norm, a.dx, a.hFinal, W.Norm, a.rstdF, T, H)
	for l := c.Layers - 1; l >= 0; l-- {
		la, lw, lg := a.layers[l], &W.Layers[l], &G.Layers[l]
		// out = hmid + down(a): dh is d(out), and keeps flowing to hmid.
		be.MatMul(a.da, a.dh, lw.Down, T, I, H, false, false, 0)
		be.MatMul(lg.Down, a.dh, la.a, H, I, T, true, false, 1)
		be.SwiGLUBackward(a.dg, a.du, a.da, la.g, la.u, T*I)
		be.MatMul(a.dx, a.dg, lw.Gate, T, H, I, false, false, 0)
		be.MatMul(a.dx, a.du, lw.Up, T, H, I, false, false, 1)
		be.MatMul(lg.Gate, a.dg, la.xn2, I, H, T, true, false, 1)
		be.MatMul(lg.Up, a.du, la.xn2, I, H, T, true, false, 1)
		be.RMSNormBackward(a.dh, lg.PostNorm, a.dx, la.hmid, lw.PostNorm, la.rstd2, T, H)
		// hmid = res + o_proj(att): dh is d(hmid), and keeps flowing to res.
		be.MatMul(a.datt, a.dh, lw.Wo, T, Q, H, false, false, 0)
		be.MatMul(lg.Wo, a.dh, la.att, H, Q, T, true, false, 1)
		if lg.Bo.N > 0 {
			be.BiasBackward(lg.Bo, a.dh, T, H)
		}
		qr, kr, dqr, dkr := la.q, la.k, a.dq, a.dk
		if c.QKNorm {
			qr, kr, dqr, dkr = la.qn, la.kn, a.dqn, a.dkn
		}
		be.AttentionBackward(dqr, dkr, a.dv, a.datt, qr, kr, la.v, la.att, la.lse, m.attnDims(a), vis, a.docs)
		be.RoPE(dqr, a.pos, m.ropeCos, m.ropeSin, T, c.Heads, hd, true)
		be.RoPE(dkr, a.pos, m.ropeCos, m.ropeSin, T, c.KVHeads, hd, true)
		if c.QKNorm {
			be.Zero(a.dq)
			be.Zero(a.dk)
			be.RMSNormBackward(a.dq, lg.QNorm, a.dqn, la.q, lw.QNorm, la.rstdQ, T*c.Heads, hd)
			be.RMSNormBackward(a.dk, lg.KNorm, a.dkn, la.k, lw.KNorm, la.rstdK, T*c.KVHeads, hd)
		}
		be.MatMul(a.dx, a.dq, lw.Wq, T, H, Q, false, false, 0)
		be.MatMul(a.dx, a.dk, lw.Wk, T, H, KV, false, false, 1)
		be.MatMul(a.dx, a.dv, lw.Wv, T, H, KV, false, false, 1)
		be.MatMul(lg.Wq, a.dq, la.xn1, Q, H, T, true, false, 1)
		be.MatMul(lg.Wk, a.dk, la.xn1, KV, H, T, true, false, 1)
		be.MatMul(lg.Wv, a.dv, la.xn1, KV, H, T, true, false, 1)
		if lg.Bq.N > 0 {
			be.BiasBackward(lg.Bq, a.dq, T, Q)
			be.BiasBackward(lg.Bk, a.dk, T, KV)
			be.BiasBackward(lg.Bv, a.dv, T, KV)
		}
		be.RMSNormBackward(a.dh, lg.InNorm, a.dx, la.res, lw.InNorm, la.rstd1, T, H)
	}
	be.EmbeddingBackward(G.Embed, a.dh, a.ids, T, H)
	return be.Err()
}
