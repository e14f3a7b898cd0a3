package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/safetensors"
)

// Layout places every parameter tensor in one flat buffer, in the order of
// Config.Tensors, each at a multiple of tensorAlign values.
type Layout struct {
	Specs   []TensorSpec
	Offsets []int
	Total   int // the buffer's length, padding included
	Values  int // the tensors' values: Total less the padding
	index   map[string]int
}

// tensorAlign is the multiple of values every tensor's offset in a
// parameter buffer is padded to: 16 bytes in bf16, 32 in float32, so that
// cuBLAS reads each weight (and its bf16 copy) at an aligned address
// whatever the shapes (a vocabulary of 513, odd widths). Padding is zero
// and never read. A variable so that tests can compare with none.
var tensorAlign = 8

// pack places a tensor of n values after *end at the next aligned offset.
func pack(end *int, n int) (off int) {
	off = (*end + tensorAlign - 1) / tensorAlign * tensorAlign
	*end = off + n
	return off
}

// NewLayout lays out the parameters of cfg.
func NewLayout(cfg *Config) *Layout { return layoutOf(cfg.Tensors()) }

func layoutOf(specs []TensorSpec) *Layout {
	l := &Layout{Specs: specs, index: map[string]int{}}
	for i, s := range specs {
		l.index[s.Name] = i
		l.Offsets = append(l.Offsets, pack(&l.Total, s.Elements()))
		l.Values += s.Elements()
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

// Embedding is the token embedding table (Vocab x Dim).
type Embedding struct {
	Vocab, Dim int
	W, DW      kernels.Buf
}

// Params is the embedding's table.
func (e *Embedding) Params() []Param {
	return []Param{{EmbedName, []int{e.Vocab, e.Dim}, &e.W, &e.DW}}
}

// Model is a decoder with its parameters on a backend: the blocks, whose
// views point into one parameter buffer (and one gradient buffer, allocated
// by EnableGrads).
type Model struct {
	Cfg    *Config
	BE     kernels.Backend
	Layout *Layout
	// Params holds the parameters in float32: all of them, or with Half
	// (LoadFrozen) the others.
	Params kernels.Buf
	Half   kernels.Buf
	Grads  kernels.Buf

	Embed  Embedding
	Layers []*Layer
	Norm   Norm   // model.norm
	Head   Linear // lm_head; with tied embeddings its views are the embedding's

	// TiedAs records how the source stored a tied matrix ("embed_tokens" or
	// "lm_head") so that an export keeps the source's names.
	TiedAs string

	table            []Param // paramTable of the blocks above
	lora             *LoRA   // SetAdapter: the base is frozen
	ropeCos, ropeSin kernels.Buf
	ropeLen          int

	// Full fine-tuning on a bf16-matmul GPU: bf16 copies of the weights the
	// products read (copyTensors), made from Params by ParamsWritten, one
	// cast per run of tensors that follow one another in both.
	copies   kernels.Buf
	copyRuns []BF16Run
	noCopies bool // SetBF16Copies(false)

	// With Half: tensor i sits at place[i] in Params, or at ^place[i] in Half.
	place         []int
	halfNonFinite bool
	source        *frozenSource // LoadFrozen: where the source's values are
}

// blocks are the model's blocks for cfg, without views.
type blocks struct {
	Embed  Embedding
	Layers []*Layer
	Norm   Norm
	Head   Linear
}

func newBlocks(c *Config) *blocks {
	b := &blocks{Embed: Embedding{Vocab: c.Vocab, Dim: c.Hidden}, Norm: Norm{Name: "model.norm", Dim: c.Hidden},
		Head: Linear{Name: "lm_head", In: c.Hidden, Out: c.Vocab}}
	for i := 0; i < c.Layers; i++ {
		b.Layers = append(b.Layers, newLayer(c, i))
	}
	return b
}

// paramTable is the model's tensor table in parameter-buffer order with
// whole names: the embedding, each layer's rows under its prefix, the final
// norm and, untied, the LM head. With tied embeddings the one shared matrix
// is listed under EmbedName.
func paramTable(c *Config, embed *Embedding, layers []*Layer, norm *Norm, head *Linear) []Param {
	ps := embed.Params()
	for i, ly := range layers {
		for _, p := range ly.Params() {
			p.Suffix = LayerPrefix(i) + p.Suffix
			ps = append(ps, p)
		}
	}
	ps = append(ps, norm.Params()...)
	if !c.TieEmbeddings {
		ps = append(ps, head.Params()...)
	}
	return ps
}

// New allocates a model with zero parameters.
func New(cfg *Config, be kernels.Backend) *Model { return newModel(cfg, be, false) }

// newModel allocates a model; with frozen, on a backend with
// kernels.BF16Weights, the halfTensors in one bf16 buffer.
func newModel(cfg *Config, be kernels.Backend, frozen bool) *Model {
	l := NewLayout(cfg)
	b := newBlocks(cfg)
	m := &Model{Cfg: cfg, BE: be, Layout: l, TiedAs: "embed_tokens",
		Embed: b.Embed, Layers: b.Layers, Norm: b.Norm, Head: b.Head}
	m.table = paramTable(cfg, &m.Embed, m.Layers, &m.Norm, &m.Head)
	half := map[string]bool{}
	bw, ok := be.(kernels.BF16Weights)
	if frozen && ok {
		half = halfTensors(cfg, b)
	}
	var nf, nh int
	place := make([]int, len(l.Specs))
	for i, s := range l.Specs {
		if half[s.Name] {
			place[i] = ^pack(&nh, s.Elements())
		} else {
			place[i] = pack(&nf, s.Elements())
		}
	}
	if nh > 0 {
		if m.Half, ok = bw.AllocBF16(nh); ok {
			m.place = place
		} else {
			nf = l.Total // fp32 matmuls: no bf16 weights
		}
	}
	m.Params = be.Alloc(nf)
	m.bind(m.Params, false)
	return m
}

// bind points the blocks' parameter (or, with grad, gradient) views into buf.
func (m *Model) bind(buf kernels.Buf, grad bool) {
	for i, p := range m.table {
		if grad {
			*p.G = buf.Slice(m.Layout.Offsets[i], m.Layout.Specs[i].Elements())
		} else {
			*p.W = m.tensorBuf(i)
		}
	}
	if m.Cfg.TieEmbeddings {
		m.Head.W, m.Head.DW = m.Embed.W, m.Embed.DW
	}
}

// Load reads config.json and the weights of an HF model directory.
func Load(dir string, be kernels.Backend) (*Model, error) {
	cfg, r, tiedAs, err := openChecked(dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	m := New(cfg, be)
	if tiedAs == "lm_head" {
		m.TiedAs = "lm_head"
	}
	if err := m.LoadWeights(r); err != nil {
		return nil, err
	}
	return m, be.Err()
}

// OpenDir reads the config.json of the HF model directory dir and opens
// its safetensors files; the caller closes r.
func OpenDir(dir string) (*Config, *safetensors.Reader, error) {
	if err := CheckDir(dir); err != nil {
		return nil, nil, err
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	if err := checkWeights(dir); err != nil {
		return nil, nil, err
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		return nil, nil, &DirError{dir, err.Error(), err}
	}
	return cfg, r, nil
}

// checkWeights refuses a folder without weights as a DirError.
func checkWeights(dir string) error {
	if !noWeights(dir) {
		return nil
	}
	msg := fmt.Sprintf("%s has no weights (*.safetensors): is it a model folder? (%s)", dir, folderKind)
	if bins, _ := filepath.Glob(filepath.Join(dir, "*.bin")); len(bins) > 0 {
		msg = fmt.Sprintf("%s has no *.safetensors, only %s: dllm reads safetensors; save the model with safe_serialization=True", dir, filepath.Base(bins[0]))
	}
	return &DirError{dir, msg, nil}
}

// noWeights reports whether dir has neither a safetensors index nor a
// *.safetensors file.
func noWeights(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, safetensors.IndexName)); err == nil {
		return false
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	return len(m) == 0
}

// openChecked is OpenDir refusing, in one line, weights that do not match
// the config (extra tensors pass); tiedAs is Config.Check's.
func openChecked(dir string) (cfg *Config, r *safetensors.Reader, tiedAs string, err error) {
	if cfg, r, err = OpenDir(dir); err != nil {
		return nil, nil, "", err
	}
	problems, tiedAs := cfg.Check(r)
	for _, p := range problems {
		if p.Kind != "unexpected" {
			r.Close()
			return nil, nil, "", &DirError{dir, fmt.Sprintf("%s does not match its config.json: %s (run 'dllm inspect %s' for the full list)", dir, p, dir), nil}
		}
	}
	return cfg, r, tiedAs, nil
}

// LoadWeights copies every expected tensor of r into the parameter buffer.
func (m *Model) LoadWeights(r *safetensors.Reader) error {
	host := m.Params.Host
	if host == nil || m.place != nil {
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
	if m.Params.Host == nil || m.place != nil {
		m.upload(host)
	}
	return nil
}

// upload copies host (every tensor, in layout order) to the parameters.
func (m *Model) upload(host []float32) {
	defer m.ParamsWritten()
	if m.place == nil {
		m.BE.Upload(m.Params, host)
		return
	}
	for i, s := range m.Layout.Specs {
		m.BE.Upload(m.tensorBuf(i), host[m.Layout.Offsets[i]:m.Layout.Offsets[i]+s.Elements()])
	}
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
	m.upload(host)
}

// EnableGrads allocates the gradient buffer (zeroed).
func (m *Model) EnableGrads() {
	if m.Grads.N == 0 && m.lora == nil {
		m.Grads = m.BE.Alloc(m.Layout.Total)
		m.BE.Zero(m.Grads)
		m.bind(m.Grads, true)
		m.enableCopies()
	}
}

// Free gives the model's buffers back to the backend; m is not used after.
func (m *Model) Free() {
	for _, b := range []kernels.Buf{m.Params, m.Half, m.Grads, m.copies, m.ropeCos, m.ropeSin} {
		if b.N > 0 {
			m.BE.Free(b)
		}
	}
	m.Params, m.Half, m.Grads, m.copies, m.ropeCos, m.ropeSin = kernels.Buf{}, kernels.Buf{}, kernels.Buf{}, kernels.Buf{}, kernels.Buf{}, kernels.Buf{}
	m.ropeLen = 0
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

// ParamFetch reads the model's parameters (export names, as ExportSpecs)
// where they are held: float32, or bf16 (HalfHeld) widened.
func (m *Model) ParamFetch() safetensors.Fetch {
	return m.fetch(m.Tensor)
}

// FetchFrom reads tensors out of buf, a buffer laid out as m.Layout (an
// optimizer state): never the parameters, which a HalfHeld model does not
// hold in that layout (ParamFetch reads those).
func (m *Model) FetchFrom(buf kernels.Buf) safetensors.Fetch {
	return m.fetch(func(name string) (kernels.Buf, bool) { return m.Layout.View(buf, name) })
}

func (m *Model) fetch(view func(string) (kernels.Buf, bool)) safetensors.Fetch {
	return func(name string, dst []float32) error {
		if name == LMHeadName && m.Cfg.TieEmbeddings {
			name = EmbedName
		}
		v, ok := view(name)
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
	if m.place != nil {
		return nil, fmt.Errorf("GrowVocab: a model loaded with bf16 weights (LoadFrozen grows the vocabulary itself)")
	}
	cfg := grownConfig(m.Cfg, n)
	g := New(cfg, m.BE)
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
		if s.Name == EmbedName || s.Name == LMHeadName {
			meanRows(dst, len(src)/H, H)
		}
	}
	g.BE.Upload(g.Params, host)
	return g, g.BE.Err()
}
