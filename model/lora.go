package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/safetensors"
)

// LoRATargets are the linears LoRA adapts by default, in layer order.
var LoRATargets = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// LoRAConfig describes a LoRA adapter (PEFT's LoraConfig terms).
type LoRAConfig struct {
	Rank    int
	Alpha   float64
	Dropout float64
	Targets []string // module names, a subset of LoRATargets
	// TrainRows are embedding rows trained in full (PEFT's
	// trainable_token_indices): the mask token's row when it is new or spare.
	TrainRows  []int
	TrainNorms bool // RMSNorm weights trained too (PEFT's modules_to_save)
}

// Scale is alpha / r, the factor of B A.
func (c *LoRAConfig) Scale() float32 { return float32(c.Alpha / float64(c.Rank)) }

// Validate checks the settings and puts the targets in layer order.
func (c *LoRAConfig) Validate() error {
	switch {
	case c.Rank <= 0:
		return fmt.Errorf("--lora-rank must be positive, got %d", c.Rank)
	case !(c.Alpha > 0):
		return fmt.Errorf("--lora-alpha must be positive, got %g", c.Alpha)
	case c.Dropout < 0 || c.Dropout >= 1:
		return fmt.Errorf("--lora-dropout must be in [0, 1), got %g", c.Dropout)
	case len(c.Targets) == 0:
		return fmt.Errorf("--lora-targets is empty: name some of %s", strings.Join(LoRATargets, ","))
	}
	var ordered []string
	for _, t := range c.Targets {
		t = strings.TrimSpace(t)
		if !slices.Contains(LoRATargets, t) {
			return fmt.Errorf("--lora-targets: %q is not a linear of these models (choose from %s)", t, strings.Join(LoRATargets, ","))
		}
		if !slices.Contains(ordered, t) {
			ordered = append(ordered, t)
		}
	}
	slices.SortFunc(ordered, func(a, b string) int { return slices.Index(LoRATargets, a) - slices.Index(LoRATargets, b) })
	c.Targets = ordered
	return nil
}

// targetOf is the target a linear (named as in its layer) answers to: its
// last name component, Mixtral's expert w1/w3/w2 as gate/up/down_proj. A
// MoE router ("mlp.gate") and shared-expert gate answer to none.
func targetOf(name string) string {
	last := lastName(name)
	switch last {
	case "w1":
		return "gate_proj"
	case "w3":
		return "up_proj"
	case "w2":
		return "down_proj"
	}
	return last
}

// lastName is a module path's last component.
func lastName(path string) string { return path[strings.LastIndex(path, ".")+1:] }

// adaptedLinears lists, per layer and in the layer's order, the linears
// the targets adapt: on a mixture-of-experts model gate/up/down_proj are
// every expert's, the shared expert's and dense layers' projections.
func adaptedLinears(c *Config, targets []string) [][]*Linear {
	b := newBlocks(c)
	out := make([][]*Linear, len(b.Layers))
	for l, ly := range b.Layers {
		for _, lin := range ly.Linears() {
			if slices.Contains(targets, targetOf(lin.Name)) {
				out[l] = append(out[l], lin)
			}
		}
	}
	return out
}

// TrainedRowsName is where the trained embedding rows live in the adapter
// (PEFT's TrainableTokens name).
const TrainedRowsName = "model.embed_tokens.token_adapter.trainable_tokens_delta"

// PEFTPrefix is what PEFT puts before the base model's module names.
const PEFTPrefix = "base_model.model."

// LoRALinear is the adapter of one linear: out += scale * B (A drop(x)).
// A is r x In, B is Out x r; GA, GB their gradients. It implements the
// Linear block's Adapter: it keeps h = scale * A drop(x) (rows x r) for its
// backward.
type LoRALinear struct {
	A, B, GA, GB kernels.Buf
	R, In, Out   int
	Scale        float32

	ad  *LoRA
	mod string // the linear's name in its layer
	id  uint64 // layer * (adapted linears per layer) + index: the dropout stream
	h   kernels.Buf
}

// Forward adds the low-rank path to out (rows x Out) for input x (rows x In).
func (l *LoRALinear) Forward(be kernels.Backend, out, x kernels.Buf, rows int) {
	if l.h.N < rows*l.R {
		if l.h.N > 0 {
			be.Free(l.h)
		}
		l.h = be.Alloc(rows * l.R)
	}
	h := l.h.Slice(0, rows*l.R)
	x, _ = l.ad.dropout(be, x, rows, l.In, l.id)
	be.MatMul(h, x, l.A, rows, l.R, l.In, false, true, 0)
	be.Scale(h, l.Scale, rows*l.R)
	be.MatMul(out, h, l.B, rows, l.Out, l.R, false, true, 1)
}

// Backward accumulates dA and dB and adds the path's input gradient to dx
// from dout; the base weight gets no gradient here.
func (l *LoRALinear) Backward(be kernels.Backend, dx, dout, x kernels.Buf, rows int) {
	h, g := l.h.Slice(0, rows*l.R), l.ad.scratchG(be, rows)
	// dB = dout^T h (h carries the scale).
	be.MatMul(l.GB, dout, h, l.Out, l.R, rows, true, false, 1)
	// g = scale * dout B, the gradient of A drop(x).
	be.MatMul(g, dout, l.B, rows, l.R, l.Out, false, false, 0)
	be.Scale(g, l.Scale, rows*l.R)
	xd, dropped := l.ad.dropout(be, x, rows, l.In, l.id) // the forward's mask
	be.MatMul(l.GA, g, xd, l.R, l.In, rows, true, false, 1)
	if !dropped {
		be.MatMul(dx, g, l.A, rows, l.In, l.R, false, false, 1)
		return
	}
	// d drop(x) = g A; dx += mask * scale * (g A).
	d := l.ad.drop
	t := d.t.Slice(0, rows*l.In)
	be.MatMul(t, g, l.A, rows, l.In, l.R, false, false, 0)
	du := d.xd.Slice(0, rows*l.In)
	be.SwiGLUBackward(d.junk.Slice(0, rows*l.In), du, t, d.gate.Slice(0, rows*l.In), x, rows*l.In)
	be.Add(dx, dx, du, rows*l.In)
}

// LoRA holds everything a LoRA run trains, in one parameter buffer with
// its gradient: A and B of every target of every layer, the trained
// embedding rows, and (with TrainNorms) the norm weights. Rows and norms are
// copies: CopyInto writes them into the model after each update.
type LoRA struct {
	Cfg    LoRAConfig
	Layout *Layout
	Params kernels.Buf
	Grads  kernels.Buf
	// Layers[l] are the adapters of layer l's adapted linears, in the
	// layer's order.
	Layers [][]LoRALinear
	// Rows is the trained rows' values (len(TrainRows) x hidden), GRows
	// their gradient.
	Rows, GRows kernels.Buf
	// Norms are the trained norm weights by their model tensor name.
	Norms, GNorms map[string]kernels.Buf

	g          kernels.Buf // backward scratch, rows x r
	drop       dropState
	sink       kernels.Buf // frozen norms' gradient
	rowScratch kernels.Buf
	rowHost    []float32
}

// dropState is LoRA dropout: each adapted linear's input is multiplied by a
// fresh Bernoulli(1-p) mask over 1-p, drawn from a counter-based hash of
// (seed, linear, element), so the backward (and a recomputed forward, and a
// resumed run) draws the same mask without storing it. The backend has no
// elementwise product: the mask is applied as silu(gate) * x with gate 0
// (silu(0) = 0) or the gate whose silu is 1/(1-p), and its backward is
// SwiGLU's du.
type dropState struct {
	on, training bool
	seed         uint64
	gateVal      float32
	host         []float32
	gate, xd     kernels.Buf // rows x the widest adapted input
	t, junk      kernels.Buf
}

// SetDropout turns dropout on for the passes that follow (a training
// micro-batch, seed its own) or off (evaluation). Without dropout it does
// nothing.
func (a *LoRA) SetDropout(training bool, seed uint64) {
	a.drop.training, a.drop.seed = training, seed
}

// siluInverse solves silu(g) = y for g > 0 (y >= 1) by Newton's method.
func siluInverse(y float64) float64 {
	g := y
	for i := 0; i < 50; i++ {
		s := 1 / (1 + math.Exp(-g))
		f := g*s - y
		g -= f / (s + g*s*(1-s))
	}
	return g
}

// dropout returns x with the linear id's mask applied (in a scratch
// buffer), or x itself when dropout is off.
func (a *LoRA) dropout(be kernels.Backend, x kernels.Buf, rows, in int, id uint64) (kernels.Buf, bool) {
	d := &a.drop
	if !d.on || !d.training {
		return x, false
	}
	n := rows * in
	if d.gate.N < n {
		for _, b := range []kernels.Buf{d.gate, d.xd, d.t, d.junk} {
			if b.N > 0 {
				be.Free(b)
			}
		}
		d.gate, d.xd, d.t, d.junk = be.Alloc(n), be.Alloc(n), be.Alloc(n), be.Alloc(n)
		d.host = make([]float32, n)
	}
	p := float32(a.Cfg.Dropout)
	for i := range d.host[:n] {
		if kernels.Hash01(d.seed, int(id), i) < p {
			d.host[i] = 0
		} else {
			d.host[i] = d.gateVal
		}
	}
	gate, xd := d.gate.Slice(0, n), d.xd.Slice(0, n)
	be.Upload(gate, d.host[:n])
	be.SwiGLU(xd, gate, x, n)
	return xd, true
}

func (a *LoRA) scratchG(be kernels.Backend, rows int) kernels.Buf {
	if a.g.N < rows*a.Cfg.Rank {
		if a.g.N > 0 {
			be.Free(a.g)
		}
		a.g = be.Alloc(rows * a.Cfg.Rank)
	}
	return a.g.Slice(0, rows*a.Cfg.Rank)
}

// AdapterSpecs lists the adapter's tensors in buffer order, under the base
// model's module names (PEFT's without its "base_model.model." prefix).
func AdapterSpecs(c *Config, lc *LoRAConfig) []TensorSpec {
	var out []TensorSpec
	for l, lins := range adaptedLinears(c, lc.Targets) {
		for _, lin := range lins {
			p := LayerPrefix(l) + lin.Name
			out = append(out, TensorSpec{p + ".lora_A.weight", []int{lc.Rank, lin.In}}, TensorSpec{p + ".lora_B.weight", []int{lin.Out, lc.Rank}})
		}
	}
	if len(lc.TrainRows) > 0 {
		out = append(out, TensorSpec{TrainedRowsName, []int{len(lc.TrainRows), c.Hidden}})
	}
	if lc.TrainNorms {
		for _, s := range c.Tensors() {
			if strings.Contains(s.Name, "norm") {
				out = append(out, s)
			}
		}
	}
	return out
}

// NewLoRA allocates an adapter for m on m's backend, initialised as PEFT
// does: A Kaiming-uniform (a = sqrt(5), so U(-1/sqrt(in), 1/sqrt(in))) from
// seed, B zero, so the adapted model starts equal to m; trained rows and
// norms start as m's values.
func NewLoRA(m *Model, lc LoRAConfig, seed uint64) (*LoRA, error) {
	if err := lc.Validate(); err != nil {
		return nil, err
	}
	for _, r := range lc.TrainRows {
		if r < 0 || r >= m.Cfg.Vocab {
			return nil, fmt.Errorf("lora: trained row %d outside the vocabulary (%d)", r, m.Cfg.Vocab)
		}
	}
	a := &LoRA{Cfg: lc, Layout: layoutOf(AdapterSpecs(m.Cfg, &lc))}
	host := make([]float32, a.Layout.Total)
	rng := rand.New(rand.NewPCG(seed, 0x6c6f7261))
	H := m.Cfg.Hidden
	for i, s := range a.Layout.Specs {
		dst := host[a.Layout.Offsets[i] : a.Layout.Offsets[i]+s.Elements()]
		switch {
		case strings.HasSuffix(s.Name, ".lora_A.weight"):
			bound := 1 / math.Sqrt(float64(s.Shape[1]))
			for j := range dst {
				dst[j] = float32((2*rng.Float64() - 1) * bound)
			}
		case strings.HasSuffix(s.Name, ".lora_B.weight"):
		case s.Name == TrainedRowsName:
			for k, r := range lc.TrainRows {
				m.BE.Download(dst[k*H:(k+1)*H], m.Embed.W.Slice(r*H, H))
			}
		default: // a norm
			v, _ := m.Tensor(s.Name)
			m.BE.Download(dst, v)
		}
	}
	a.drop.on = lc.Dropout > 0
	a.drop.gateVal = float32(siluInverse(1 / (1 - lc.Dropout)))
	a.Params = m.BE.Alloc(a.Layout.Total)
	a.Grads = m.BE.Alloc(a.Layout.Total)
	m.BE.Upload(a.Params, host)
	m.BE.Zero(a.Grads)
	a.views(m.Cfg)
	return a, m.BE.Err()
}

func (a *LoRA) views(c *Config) {
	get := func(buf kernels.Buf, name string) kernels.Buf { v, _ := a.Layout.View(buf, name); return v }
	a.Layers = nil
	all := adaptedLinears(c, a.Cfg.Targets)
	stride := 0 // dense models: len(Targets), the ids of before MoE
	for _, lins := range all {
		stride = max(stride, len(lins))
	}
	for l, lins := range all {
		var ls []LoRALinear
		for k, lin := range lins {
			p := LayerPrefix(l) + lin.Name
			ls = append(ls, LoRALinear{A: get(a.Params, p+".lora_A.weight"), B: get(a.Params, p+".lora_B.weight"),
				GA: get(a.Grads, p+".lora_A.weight"), GB: get(a.Grads, p+".lora_B.weight"),
				R: a.Cfg.Rank, In: lin.In, Out: lin.Out, Scale: a.Cfg.Scale(), ad: a, mod: lin.Name, id: uint64(l*stride + k)})
		}
		a.Layers = append(a.Layers, ls)
	}
	a.Rows, a.GRows = get(a.Params, TrainedRowsName), get(a.Grads, TrainedRowsName)
	a.Norms, a.GNorms = map[string]kernels.Buf{}, map[string]kernels.Buf{}
	if a.Cfg.TrainNorms {
		for _, s := range a.Layout.Specs {
			if strings.Contains(s.Name, "norm") {
				a.Norms[s.Name], a.GNorms[s.Name] = get(a.Params, s.Name), get(a.Grads, s.Name)
			}
		}
	}
}

// Free returns the buffers.
func (a *LoRA) Free(be kernels.Backend) {
	for _, b := range []kernels.Buf{a.Params, a.Grads, a.g, a.drop.gate, a.drop.xd, a.drop.t, a.drop.junk, a.sink, a.rowScratch} {
		if b.N > 0 {
			be.Free(b)
		}
	}
	for _, ls := range a.Layers {
		for _, l := range ls {
			if l.h.N > 0 {
				be.Free(l.h)
			}
		}
	}
}

// Trainable is the number of trained values.
func (a *LoRA) Trainable() int { return a.Layout.Values }

// CopyInto writes the trained rows and norms into m's parameters, which
// the forward reads.
func (a *LoRA) CopyInto(m *Model) {
	H := m.Cfg.Hidden
	for k, r := range a.Cfg.TrainRows {
		m.BE.Copy(m.Embed.W.Slice(r*H, H), a.Rows.Slice(k*H, H))
	}
	for name, v := range a.Norms {
		dst, _ := m.Tensor(name)
		m.BE.Copy(dst, v)
	}
}

// Decays reports whether AdamW's weight decay applies to an adapter tensor:
// A, B and embedding rows yes, norms no.
func (a *LoRA) Decays(name string) bool { return !strings.Contains(name, "norm") }

// OpenMerged reads m's tensors with the adapter merged, W + (alpha/r) B A
// in float32 (B A on the backend), and the trained rows and norms as the
// adapter holds them, until closed. Names are as in m.ExportSpecs. W is the
// source's value (m.OpenSource: the source files are opened once), never a
// bf16 copy the device holds.
func (a *LoRA) OpenMerged(m *Model) (safetensors.Fetch, func() error, error) {
	base, closeBase, err := m.OpenSource()
	if err != nil {
		return nil, nil, err
	}
	return func(name string, dst []float32) error {
		if err := base(name, dst); err != nil {
			return err
		}
		key := name
		if key == LMHeadName && m.Cfg.TieEmbeddings {
			key = EmbedName
		}
		if key == EmbedName {
			H := m.Cfg.Hidden
			for k, r := range a.Cfg.TrainRows {
				m.BE.Download(dst[r*H:(r+1)*H], a.Rows.Slice(k*H, H))
			}
			return m.BE.Err()
		}
		if v, ok := a.Norms[key]; ok {
			m.BE.Download(dst, v)
			return m.BE.Err()
		}
		mod, ok := strings.CutSuffix(key, ".weight")
		if !ok {
			return nil
		}
		ai, ok := a.Layout.index[mod+".lora_A.weight"]
		if !ok {
			return nil
		}
		bi := a.Layout.index[mod+".lora_B.weight"]
		r, in, out := a.Cfg.Rank, a.Layout.Specs[ai].Shape[1], a.Layout.Specs[bi].Shape[0]
		A := a.Params.Slice(a.Layout.Offsets[ai], r*in)
		B := a.Params.Slice(a.Layout.Offsets[bi], out*r)
		ba := m.BE.Alloc(out * in)
		defer m.BE.Free(ba)
		defer fp32Products(m.BE)()
		m.BE.MatMul(ba, B, A, out, in, r, false, false, 0)
		delta := make([]float32, out*in)
		m.BE.Download(delta, ba)
		s := a.Cfg.Scale()
		for i := range dst {
			// Rounded before the add (no FMA on any GOARCH), as MergeLoRA's
			// Scale then Add: --adapter merges to the same bits.
			dst[i] += float32(s * delta[i])
		}
		return m.BE.Err()
	}, closeBase, nil
}

// SetAdapter freezes m's base (no gradient buffer, no dW in any linear)
// and attaches a: its LoRA linears on the linears it targets, its norm
// gradients on trained norms (frozen norms' go to a scratch nobody reads),
// and the trained embedding rows' gradient in the backward.
func (m *Model) SetAdapter(a *LoRA) {
	m.lora = a
	c := m.Cfg
	sink := m.BE.Alloc(max(c.Hidden, c.HeadDim))
	a.sink = sink
	norm := func(n *Norm, name string) {
		if g, ok := a.GNorms[name]; ok {
			n.DW = g
		} else {
			n.DW = sink.Slice(0, n.Dim)
		}
	}
	for l, ly := range m.Layers {
		p := LayerPrefix(l)
		for _, lin := range ly.Linears() {
			lin.Frozen = true
			for k := range a.Layers[l] {
				if a.Layers[l][k].mod == lin.Name {
					lin.Adapter = &a.Layers[l][k]
				}
			}
		}
		norm(&ly.InNorm, p+ly.InNorm.Name+".weight")
		norm(&ly.PostNorm, p+ly.PostNorm.Name+".weight")
		if q := ly.Attn.QNorm; q != nil {
			norm(q, p+q.Name+".weight")
			norm(ly.Attn.KNorm, p+ly.Attn.KNorm.Name+".weight")
		}
	}
	norm(&m.Norm, NormName)
	m.Head.Frozen = true
}

// needsLogits: trained rows of a tied matrix take the LM head's gradient
// from the logits, so the fused head-and-loss kernel cannot be used.
func (a *LoRA) needsLogits(m *Model) bool {
	return a != nil && m.Cfg.TieEmbeddings && len(a.Cfg.TrainRows) > 0
}

// backwardRows accumulates the trained embedding rows' gradient: the
// embedding's share (the positions holding the row's id, from a.dh) and,
// with tied embeddings, the LM head's (the row's logit column against the
// final hidden states xs).
func (a *LoRA) backwardRows(m *Model, act *Activations, xs kernels.Buf) {
	if len(a.Cfg.TrainRows) == 0 {
		return
	}
	be, H, T, V, n := m.BE, m.Cfg.Hidden, act.T, m.Cfg.Vocab, act.NRows()
	need := T + n
	if m.Cfg.TieEmbeddings {
		need += V
	}
	if a.rowScratch.N < need {
		if a.rowScratch.N > 0 {
			be.Free(a.rowScratch)
		}
		a.rowScratch = be.Alloc(need)
		a.rowHost = make([]float32, max(T, V))
	}
	ind, col := a.rowScratch.Slice(0, T), a.rowScratch.Slice(T, n)
	for k, row := range a.Cfg.TrainRows {
		g := a.GRows.Slice(k*H, H)
		for i, id := range act.IDs[:T] {
			a.rowHost[i] = 0
			if int(id) == row {
				a.rowHost[i] = 1
			}
		}
		be.Upload(ind, a.rowHost[:T])
		be.MatMul(g, ind, act.dh, 1, H, T, false, false, 1)
		if m.Cfg.TieEmbeddings {
			e := a.rowScratch.Slice(T+n, V)
			clear(a.rowHost[:V])
			a.rowHost[row] = 1
			be.Upload(e, a.rowHost[:V])
			be.MatMul(col, act.Logits, e, n, 1, V, false, false, 0)
			be.MatMul(g, col, xs, 1, H, n, true, false, 1)
		}
	}
}

// TrainableCount is the number of values an adapter of lc trains on cfg
// (rows: how many embedding rows).
func (lc *LoRAConfig) TrainableCount(c *Config, rows int) int64 {
	return int64(lc.layout(c, rows).Values)
}

// BufferLen is the length of the buffers of an adapter of lc on cfg
// (TrainableCount with each tensor's alignment padding).
func (lc *LoRAConfig) BufferLen(c *Config, rows int) int64 {
	return int64(lc.layout(c, rows).Total)
}

// layout is the buffer layout of an adapter of lc on c training rows
// embedding rows.
func (lc *LoRAConfig) layout(c *Config, rows int) *Layout {
	l := *lc
	l.TrainRows = make([]int, rows)
	return layoutOf(AdapterSpecs(c, &l))
}

// Bytes estimates what an adapter of lc adds in training on T tokens per
// micro-batch (float32): its values, gradients and two AdamW moments, the
// kept h = scale A x of every adapted linear (rows x r), the backward
// scratch, and with dropout four buffers of the widest adapted input.
func (lc *LoRAConfig) Bytes(c *Config, T int) float64 {
	n := 4 * float64(lc.TrainableCount(c, 1))
	linears, widest := 0, 0
	for _, lins := range adaptedLinears(c, lc.Targets) {
		linears += len(lins)
		for _, lin := range lins {
			widest = max(widest, lin.In)
		}
	}
	// An expert's h holds at most T rows too.
	n += float64(linears+1) * float64(T) * float64(lc.Rank)
	if lc.Dropout > 0 {
		n += 4 * float64(T) * float64(widest)
	}
	return 4 * n
}

// fp32Products switches a backend with bf16 matrix products (kernels/cuda)
// to float32 ones until the returned function is called: a merged export
// is W + (alpha/r) B A in float32, not of B and A rounded to bf16.
func fp32Products(be kernels.Backend) (restore func()) {
	p, ok := be.(interface {
		MatmulPrecision() string
		SetMatmul(string) error
	})
	if !ok || p.MatmulPrecision() == "fp32" {
		return func() {}
	}
	prev := p.MatmulPrecision()
	p.SetMatmul("fp32")
	return func() { p.SetMatmul(prev) }
}
