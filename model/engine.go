package model

import (
	"fmt"

	"github.com/dllm-dev/dllm/kernels"
)

// Input is one batch on the host, filled by the caller and sent with
// Upload: B*L token ids, positions and document ids; the rows (token
// positions) whose logits are computed, with their Targets (-1 ignored) and
// Weights, entry for entry. Nil Rows means every position (Targets and
// Weights then have an entry per token). Noise (T x hidden), when not nil,
// is added to the embedding output: LLaDA 2.0's noise on masked positions.
type Input struct {
	IDs, Pos, Docs []int32
	Rows, Targets  []int32
	Weights        []float32
	Noise          []float32
}

// ActOptions choose what a set of activations keeps.
type ActOptions struct {
	// Training keeps what the backward needs.
	Training bool
	// Recompute keeps only each layer's input and recomputes the layer's
	// activations just before its backward (training only).
	Recompute bool
}

// Activations are the buffers of one batch shape, allocated once (one arena
// sized from the blocks' activation tables) and reused by every step:
// nothing is allocated inside Forward, Loss or Backward. The embedded Input
// is the host staging, allocated for T tokens.
type Activations struct {
	B, L, T int
	Input
	Opt ActOptions
	// Training is Opt.Training.
	Training bool

	rowStore, tgtStore []int32
	wStore             []float32

	arena                         kernels.Buf
	iarena                        kernels.IBuf
	ids, pos, docs, rows, targets kernels.IBuf
	weights                       kernels.Buf
	// res are the layer inputs: with Training one per layer plus the final
	// hidden state, else two used in turn.
	res       []kernels.Buf
	xf, rstdF kernels.Buf
	xg        kernels.Buf // gathered rows of xf
	Logits    kernels.Buf // NRows x V (gradient after Loss with grad); empty when fused
	// fused: training on a backend with kernels.HeadLoss, the LM head runs
	// inside Loss in vocabulary chunks and Logits is not kept.
	fused         bool
	loss, correct kernels.Buf
	lossH, corrH  []float32
	dh, dx, dxg   kernels.Buf
	// Each layer's activation and scratch rows (fields of the model's
	// blocks) and the views that NewActivations gave them; bind sets them.
	fields [][]*kernels.Buf
	views  [][]kernels.Buf
	pass   Pass
	// The int rows of blocks with IntActs (MoE routing), like fields/views.
	intArena kernels.IBuf
	ifields  [][]*kernels.IBuf
	iviews   [][]kernels.IBuf
	router   *routerStats // MoE models
	// AuxCoef scales the router load-balancing loss in Backward (0: off).
	AuxCoef float64
}

// ScoreRows makes Rows, Targets and Weights n entries long (reusing their
// storage) and returns Rows: the caller fills them.
func (a *Activations) ScoreRows(n int) []int32 {
	a.Rows, a.Targets, a.Weights = a.rowStore[:n], a.tgtStore[:n], a.wStore[:n]
	return a.Rows
}

// ScoreAll selects every position (Rows nil; Targets and Weights of T entries).
func (a *Activations) ScoreAll() {
	a.Rows, a.Targets, a.Weights = nil, a.tgtStore, a.wStore
}

// NRows is the number of rows whose logits are computed.
func (a *Activations) NRows() int {
	if a.Rows == nil {
		return a.T
	}
	return len(a.Rows)
}

// arenaAlign rounds every buffer of an arena up to 64 floats (256 bytes).
const arenaAlign = 64

func alignUp(n int) int { return (n + arenaAlign - 1) / arenaAlign * arenaAlign }

// actRegion is one part of the activation arena: rows laid out one after
// the other, Copies times.
type actRegion struct {
	Name   string
	Rows   []Act
	Copies int
}

func (r actRegion) size() int {
	n := 0
	for _, a := range r.Rows {
		n += alignUp(a.N)
	}
	return n * r.Copies
}

// actTable is the activation arena of a batch of T tokens of L positions per
// row: the model-level buffers, the layer inputs, each layer's kept rows
// (Layers copies when training without recompute, else one copy every
// layer shares) and, training, the backward scratch every layer shares.
// NewActivations allocates it and the memory plan sums it.
func actTable(c *Config, layers []*Layer, T int, o ActOptions, top []Act) []actRegion {
	H := c.Hidden
	regions := []actRegion{{Name: "model", Rows: top, Copies: 1}}
	nres := 2
	if o.Training {
		nres = c.Layers + 1
	}
	regions = append(regions, actRegion{Name: "layer inputs", Rows: []Act{{"res", T * H, nil}}, Copies: nres})
	kept, scratch := actRegion{Name: "layer", Copies: 1}, actRegion{Name: "backward scratch", Copies: 1}
	for _, ly := range layers {
		rows := ly.Acts(T, H)
		if o.Training && !o.Recompute {
			kept.Rows = append(kept.Rows, rows...)
		} else if sizeOf(rows) > sizeOf(kept.Rows) {
			kept.Rows = rows
		}
		if s := ly.Scratch(T); o.Training && sizeOf(s) > sizeOf(scratch.Rows) {
			scratch.Rows = s
		}
	}
	regions = append(regions, kept)
	if o.Training {
		regions = append(regions, scratch)
	}
	return regions
}

func sizeOf(rows []Act) int { return actRegion{Rows: rows, Copies: 1}.size() }

// topActs are the model-level float buffers of a.
func (a *Activations) topActs(c *Config) []Act {
	T, H := a.T, c.Hidden
	logits := T * c.Vocab
	if a.fused {
		logits = 0
	}
	top := []Act{{"weights", T, &a.weights}, {"final_norm", T * H, &a.xf}, {"final_rstd", T, &a.rstdF},
		{"rows", T * H, &a.xg}, {"logits", logits, &a.Logits}, {"loss", T, &a.loss}, {"correct", T, &a.correct}}
	if a.Opt.Training {
		top = append(top, Act{"dh", T * H, &a.dh}, Act{"dx", T * H, &a.dx}, Act{"drows", T * H, &a.dxg})
	}
	return top
}

// NewActivations allocates buffers for batches of B rows of L tokens.
// Training keeps every layer's activations for the backward; otherwise
// one set is reused across layers.
func (m *Model) NewActivations(B, L int, training bool) *Activations {
	return m.NewActivationsWith(B, L, ActOptions{Training: training})
}

// NewActivationsWith allocates buffers for batches of B rows of L tokens
// keeping what o says.
func (m *Model) NewActivationsWith(B, L int, o ActOptions) *Activations {
	c, be := m.Cfg, m.BE
	if !o.Training {
		o.Recompute = false
	}
	T := B * L
	a := &Activations{B: B, L: L, T: T, Opt: o, Training: o.Training,
		rowStore: make([]int32, T), tgtStore: make([]int32, T), wStore: make([]float32, T)}
	a.IDs, a.Pos, a.Docs = make([]int32, T), make([]int32, T), make([]int32, T)
	a.ScoreAll()
	_, hl := be.(kernels.HeadLoss)
	a.fused = hl && o.Training && !m.Head.Bias && m.Head.Adapter == nil && !m.lora.needsLogits(m)
	for i := range a.Pos {
		a.Pos[i] = int32(i % L)
	}
	a.iarena = be.AllocInt(5 * T)
	a.ids, a.pos, a.docs, a.rows, a.targets = a.iarena.Slice(0, T), a.iarena.Slice(T, T), a.iarena.Slice(2*T, T),
		a.iarena.Slice(3*T, T), a.iarena.Slice(4*T, T)

	regions := actTable(c, m.Layers, T, o, a.topActs(c))
	total := 0
	for _, r := range regions {
		total += r.size()
	}
	a.arena = be.Alloc(total)
	off := 0
	take := func(n int) kernels.Buf {
		v := a.arena.Slice(off, n)
		off += alignUp(n)
		return v
	}
	for _, r := range regions[:2] {
		for k := 0; k < r.Copies; k++ {
			for _, row := range r.Rows {
				v := take(row.N)
				if row.Buf != nil {
					*row.Buf = v
				} else {
					a.res = append(a.res, v)
				}
			}
		}
	}
	// Layer rows: in order when kept per layer, else every layer from the
	// start of the one shared copy (and the same for the scratch).
	layerStart, scratchStart := off, off+regions[2].size()
	a.fields, a.views = make([][]*kernels.Buf, c.Layers), make([][]kernels.Buf, c.Layers)
	for l, ly := range m.Layers {
		if !o.Training || o.Recompute {
			off = layerStart
		}
		for _, row := range ly.Acts(T, c.Hidden) {
			a.fields[l], a.views[l] = append(a.fields[l], row.Buf), append(a.views[l], take(row.N))
		}
	}
	if o.Training {
		for l, ly := range m.Layers {
			off = scratchStart
			for _, row := range ly.Scratch(T) {
				a.fields[l], a.views[l] = append(a.fields[l], row.Buf), append(a.views[l], take(row.N))
			}
		}
	}
	a.lossH, a.corrH = make([]float32, T), make([]float32, T)
	m.intActs(a, T, o)
	if c.MoE != nil {
		a.router = newRouterStats(c, be)
	}
	m.ensureRope(L)
	return a
}

// intActs allocates the int rows of the layers that have them, per layer
// when training without recompute, else one copy shared by all layers.
func (m *Model) intActs(a *Activations, T int, o ActOptions) {
	perLayer := o.Training && !o.Recompute
	rows := make([][]IntAct, len(m.Layers))
	total, most := 0, 0
	for l, ly := range m.Layers {
		if ia, ok := ly.FFN.(intActer); ok {
			rows[l] = ia.IntActs(T)
		}
		n := 0
		for _, r := range rows[l] {
			n += alignUp(r.N)
		}
		total, most = total+n, max(most, n)
	}
	if !perLayer {
		total = most
	}
	if total == 0 {
		return
	}
	a.intArena = m.BE.AllocInt(total)
	a.ifields, a.iviews = make([][]*kernels.IBuf, len(m.Layers)), make([][]kernels.IBuf, len(m.Layers))
	off := 0
	for l := range m.Layers {
		if !perLayer {
			off = 0
		}
		for _, r := range rows[l] {
			a.ifields[l], a.iviews[l] = append(a.ifields[l], r.Buf), append(a.iviews[l], a.intArena.Slice(off, r.N))
			off += alignUp(r.N)
		}
	}
}

// Free returns the buffers to the backend.
func (a *Activations) Free(be kernels.Backend) {
	be.Free(a.arena)
	be.FreeInt(a.iarena)
	if a.intArena.N > 0 {
		be.FreeInt(a.intArena)
	}
	if a.router != nil {
		a.router.free(be)
	}
}

// Upload sends the host staging arrays to the backend.
func (a *Activations) Upload(be kernels.Backend) {
	be.UploadInt(a.ids, a.IDs)
	be.UploadInt(a.pos, a.Pos)
	be.UploadInt(a.docs, a.Docs)
	n := a.NRows()
	if a.Rows != nil {
		be.UploadInt(a.rows.Slice(0, n), a.Rows)
	}
	be.UploadInt(a.targets.Slice(0, n), a.Targets[:n])
	be.Upload(a.weights.Slice(0, n), a.Weights[:n])
}

// bind points layer l's activation fields at a's buffers.
func (a *Activations) bind(l int) {
	for j, f := range a.fields[l] {
		*f = a.views[l][j]
	}
	if a.ifields != nil {
		for j, f := range a.ifields[l] {
			*f = a.iviews[l][j]
		}
	}
}

// resAt is the input of layer l (l == Layers: the final hidden state).
func (a *Activations) resAt(l int) kernels.Buf { return a.res[l%len(a.res)] }

func (m *Model) attnDims(a *Activations) kernels.AttnDims {
	c := m.Cfg
	return kernels.AttnDims{B: a.B, Lq: a.L, Lk: a.L, Heads: c.Heads, KVHeads: c.KVHeads, HeadDim: c.HeadDim}
}

func (m *Model) newPass(a *Activations, vis kernels.Visibility, cache *KVCache, qoff int) *Pass {
	p := &a.pass
	*p = Pass{BE: m.BE, T: a.T, Eps: float32(m.Cfg.RMSNormEps), Pos: a.pos, Docs: a.docs, Vis: vis,
		Dims: m.attnDims(a), Cos: m.ropeCos, Sin: m.ropeSin, Cache: cache, QOff: qoff, B: a.B, L: a.L, Router: a.router}
	if cache != nil {
		p.Dims.Lk, p.Dims.QOff, p.Dims.KStride = qoff+a.L, qoff, cache.MaxLen
	}
	return p
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
	c, be := m.Cfg, m.BE
	T, H := a.T, c.Hidden
	p := m.newPass(a, vis, cache, qoff)
	x0 := a.resAt(0)
	be.Embedding(x0, m.Embed.W, a.ids, T, H)
	if a.Noise != nil {
		// xf is free until the final norm: it carries the noise.
		be.Upload(a.xf, a.Noise)
		be.Add(x0, x0, a.xf, T*H)
	}
	if a.router != nil {
		a.router.start(be)
	}
	for l, ly := range m.Layers {
		a.bind(l)
		ly.Forward(p, l, a.resAt(l+1), a.resAt(l), H)
	}
	if a.router != nil {
		a.router.finish(be, T)
	}
	m.Norm.Forward(p, a.xf, a.rstdF, a.resAt(c.Layers), T)
	xs := a.xf
	if a.Rows != nil {
		be.Embedding(a.xg, a.xf, a.rows, a.NRows(), H)
		xs = a.xg
	}
	if !a.fused {
		m.Head.Forward(be, a.Logits, xs, a.NRows())
	}
}

// Loss is the weighted cross-entropy of the selected rows against Targets
// (-1 ignored) with Weights: it returns sum(w*CE) and the number of rows
// whose argmax is the target. With grad the logits become
// d(sum(w*CE)/norm)/dlogits, ready for Backward (fused: the head's forward
// and backward run here, chunk by chunk, and Backward goes on from dx).
func (m *Model) Loss(a *Activations, norm float64, grad bool) (sum float64, correct int) {
	be := m.BE
	n := a.NRows()
	if hl, ok := be.(kernels.HeadLoss); ok && a.fused {
		xs, dxs, dW := a.xf, a.dx, kernels.Buf{}
		if a.Rows != nil {
			xs, dxs = a.xg, a.dxg
		}
		if grad && !m.Head.Frozen {
			m.EnableGrads()
			dW = m.Head.DW
		}
		hl.HeadLoss(a.loss, a.correct, dxs, dW, xs, m.Head.mw(), a.targets, a.weights, n, m.Cfg.Hidden, m.Cfg.Vocab, float32(1/norm), grad)
	} else {
		be.CrossEntropy(a.loss, a.correct, a.Logits, a.targets, a.weights, n, m.Cfg.Vocab, float32(1/norm), grad)
	}
	be.Download(a.lossH[:n], a.loss.Slice(0, n))
	be.Download(a.corrH[:n], a.correct.Slice(0, n))
	for i := 0; i < n; i++ {
		sum += float64(a.lossH[i])
		correct += int(a.corrH[i])
	}
	return sum, correct
}

// RowLosses are the per-row weighted losses of the last Loss call.
func (a *Activations) RowLosses() []float32 { return a.lossH[:a.NRows()] }

// RowCorrect are the per-row argmax hits of the last Loss call.
func (a *Activations) RowCorrect() []float32 { return a.corrH[:a.NRows()] }

// Backward accumulates parameter gradients into m.Grads from the logits
// gradient Loss left behind.
func (m *Model) Backward(a *Activations, vis kernels.Visibility) error {
	if !a.Opt.Training {
		return fmt.Errorf("model: Backward on inference activations")
	}
	m.EnableGrads()
	c, be := m.Cfg, m.BE
	T, H := a.T, c.Hidden
	p := m.newPass(a, vis, nil, 0)
	xs, dxs := a.xf, a.dx
	if a.Rows != nil {
		xs, dxs = a.xg, a.dxg
	}
	if !a.fused { // else Loss left dxs and the head's gradient
		m.Head.Backward(be, dxs, a.Logits, xs, a.NRows(), false)
	}
	if a.Rows != nil {
		be.Zero(a.dx)
		be.EmbeddingBackward(a.dx, a.dxg, a.rows, a.NRows(), H)
	}
	be.Zero(a.dh)
	m.Norm.Backward(p, a.dh, a.dx, a.resAt(c.Layers), a.rstdF, T)
	if a.router != nil {
		a.router.replay = true
		a.router.uploadGrad(be, T, a.AuxCoef)
	}
	for l := c.Layers - 1; l >= 0; l-- {
		ly := m.Layers[l]
		a.bind(l)
		if a.Opt.Recompute {
			ly.Forward(p, l, a.resAt(l+1), a.resAt(l), H)
		}
		ly.Backward(p, a.dh, a.dx, a.resAt(l))
	}
	if m.lora != nil {
		m.lora.backwardRows(m, a, xs)
	} else {
		be.EmbeddingBackward(m.Embed.DW, a.dh, a.ids, T, H)
	}
	return be.Err()
}
