package diffusion

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// Alg is the order in which a sampler reveals masked positions.
type Alg string

// The samplers of DESIGN.md §3.
const (
	AlgRandom     Alg = "random"     // Dream "origin": each masked position revealed with probability 1 - s/t
	AlgConfidence Alg = "confidence" // LLaDA low-confidence remasking, Dream maskgit_plus
	AlgMargin     Alg = "margin"     // top1 - top2 probability
	AlgEntropy    Alg = "entropy"    // negative entropy
)

// Info is what a diffusion checkpoint says about itself (config.json's
// "dllm" block): the sampler must decode the way the model was trained.
type Info struct {
	MaskID    int32
	Shift     bool
	BlockSize int // > 0: block-causal attention (block diffusion)
}

// ErrNotDiffusion is InfoFrom's refusal of a config without a "dllm"
// block (an AR model), wrapped with a hint.
var ErrNotDiffusion = errors.New("config.json has no \"dllm\" block: this is not a diffusion checkpoint")

// InfoFrom reads the "dllm" block of a converted model's config.
func InfoFrom(cfg *model.Config) (Info, error) {
	d := cfg.DLLM
	if d == nil {
		return Info{}, fmt.Errorf("%w (convert it with 'dllm convert', or use --ar)", ErrNotDiffusion)
	}
	if d.MaskTokenID < 0 || d.MaskTokenID >= cfg.Vocab {
		return Info{}, fmt.Errorf("dllm.mask_token_id %d is outside the vocabulary (%d)", d.MaskTokenID, cfg.Vocab)
	}
	in := Info{MaskID: int32(d.MaskTokenID), Shift: d.Shift}
	if d.Attention == "block" {
		if d.BlockSize <= 0 {
			return Info{}, fmt.Errorf("dllm.attention is block but block_size is %d", d.BlockSize)
		}
		in.BlockSize = d.BlockSize
	}
	return in, nil
}

// Visibility is the attention rule the model was trained to end with.
func (in Info) Visibility() kernels.Visibility {
	if in.BlockSize > 0 {
		return kernels.Visibility{Mode: kernels.Block, Block: in.BlockSize}
	}
	return kernels.Visibility{Mode: kernels.Bidirectional}
}

// GenOptions controls Generate.
type GenOptions struct {
	GenLen      int
	Steps       int
	BlockLen    int // semi-autoregressive blocks (0: one block)
	Temperature float64
	TopP        float64
	TopK        int
	Alg         Alg
	AlgTemp     float64 // > 0: positions drawn from softmax(confidence / AlgTemp) instead of the top ones
	Threshold   float64 // > 0: Fast-dLLM parallel decoding
	Eps         float64 // Dream origin's smallest time
	Seed        uint64
	Batch       int
	EOS         []int32
	StopAtEOS   bool
	NoCache     bool // block models: recompute finished blocks every step
	// Observe, when set, is called after every step with the current
	// sequence of each row (prompt included).
	Observe func(step int, x [][]int32)
	// OnBlock, when set, is called when the decoding block ending at
	// position hi is finished: x[r][:hi] is final for every live row.
	OnBlock func(hi int, x [][]int32)
}

// Group is one caller's rows in a batch: Rows samples of Prompt drawn from
// a random stream of their own, seeded with Seed, so a group gets the same
// tokens batched with others as alone. Every prompt of a batch has the same
// length. When Done is closed the group's rows stop being decoded.
type Group struct {
	Prompt []int32
	Rows   int
	Seed   uint64
	Done   <-chan struct{}
}

// ErrCancelled is returned when every group of a batch was cancelled.
var ErrCancelled = errors.New("generation cancelled")

// GenResult is what Generate produced.
type GenResult struct {
	Tokens  [][]int32 // generated tokens per row (masks left where stopped early)
	Steps   int       // denoising steps taken
	Forward int       // model evaluations
	Seconds float64
	Cached  bool // finished blocks were served from the KV cache
}

// Sampler decodes from a diffusion model, reusing its buffers between steps.
type Sampler struct {
	m    *model.Model
	info Info
	opt  GenOptions
	rngs []*rand.Rand // per row; the rows of a group share one
	live []bool
	done []<-chan struct{} // per row

	B, P, N   int // rows, prompt length, total length
	x         [][]int32
	acts      map[int]*model.Activations
	cache     *model.KVCache
	logits    []float32
	prev      []float32 // shift + cache: logits of the last finished position per row
	probs     []float64
	order     []int
	cand      []candidate
	cachedTo  int
	blockEdge []int // generation block boundaries, absolute positions

	// score fills s.logits for s.cand; tests replace it with hand-built
	// logits.
	score func(lo, hi int, useCache bool) error
}

type candidate struct {
	row, pos int
	tok      int32
	conf     float64
}

// NewSampler checks the options against the model and prepares buffers.
func NewSampler(m *model.Model, info Info, opt GenOptions) (*Sampler, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if opt.Steps <= 0 {
		opt.Steps = opt.GenLen
	}
	if opt.Batch <= 0 {
		opt.Batch = 1
	}
	if opt.Eps <= 0 {
		opt.Eps = 1e-3
	}
	if opt.Alg == "" {
		opt.Alg = AlgConfidence
	}
	s := &Sampler{m: m, info: info, opt: opt, B: opt.Batch, acts: map[int]*model.Activations{}}
	s.score = s.forward
	return s, nil
}

// Free returns the buffers.
func (s *Sampler) Free() {
	for _, a := range s.acts {
		a.Free(s.m.BE)
	}
	if s.cache != nil {
		s.cache.Free(s.m.BE)
	}
}

func (s *Sampler) activations(L int) *model.Activations {
	a, ok := s.acts[L]
	if !ok {
		a = s.m.NewActivations(s.B, L, false)
		s.acts[L] = a
	}
	return a
}

// blocks splits the generated region [P, N) into decoding blocks: of
// BlockLen from P for a bidirectional model; aligned to the model's blocks
// for a block-causal one (the first may be partial), so that the cache is
// exact.
func (s *Sampler) blocks() []int {
	edges := []int{s.P}
	if b := s.info.BlockSize; b > 0 {
		for e := (s.P/b + 1) * b; e < s.N; e += b {
			edges = append(edges, e)
		}
		return append(edges, s.N)
	}
	bl := s.opt.BlockLen
	if bl <= 0 || bl > s.opt.GenLen {
		bl = s.opt.GenLen
	}
	for e := s.P + bl; e < s.N; e += bl {
		edges = append(edges, e)
	}
	return append(edges, s.N)
}

// Generate decodes GenLen tokens after prompt for each of Batch rows, all
// drawn from one random stream seeded with Seed.
func (s *Sampler) Generate(prompt []int32) (*GenResult, error) {
	return s.GenerateGroups([]Group{{Prompt: prompt, Rows: s.B, Seed: s.opt.Seed}})
}

// GenerateGroups decodes the groups together in one batch of Batch rows
// (their Rows add up to Batch), each group as Generate would alone with its
// seed. Tokens holds the rows in group order.
func (s *Sampler) GenerateGroups(groups []Group) (*GenResult, error) {
	rows := 0
	for _, g := range groups {
		if len(g.Prompt) != len(groups[0].Prompt) {
			return nil, fmt.Errorf("a batch needs prompts of one length (%d and %d)", len(groups[0].Prompt), len(g.Prompt))
		}
		rows += g.Rows
	}
	if rows != s.B || len(groups) == 0 {
		return nil, fmt.Errorf("the groups hold %d rows, the sampler has %d", rows, s.B)
	}
	prompt := groups[0].Prompt
	if len(prompt) == 0 && s.info.Shift {
		return nil, fmt.Errorf("a shifted model needs at least one prompt token (e.g. BOS) to read the first prediction from")
	}
	t0 := time.Now()
	s.P, s.N = len(prompt), len(prompt)+s.opt.GenLen
	if mp := s.m.Cfg.MaxPositions; mp > 0 && s.N > mp {
		return nil, fmt.Errorf("prompt (%d) + gen-len (%d) exceeds the model's %d positions", s.P, s.opt.GenLen, mp)
	}
	s.x = make([][]int32, s.B)
	s.rngs, s.live, s.done = make([]*rand.Rand, s.B), make([]bool, s.B), make([]<-chan struct{}, s.B)
	r := 0
	for _, g := range groups {
		rng := rand.New(rand.NewPCG(g.Seed, 0x67656e))
		for k := 0; k < g.Rows; k, r = k+1, r+1 {
			s.x[r] = make([]int32, s.N)
			copy(s.x[r], g.Prompt)
			for i := s.P; i < s.N; i++ {
				s.x[r][i] = s.info.MaskID
			}
			s.rngs[r], s.live[r], s.done[r] = rng, true, g.Done
		}
	}
	s.blockEdge = s.blocks()
	nb := len(s.blockEdge) - 1
	spb := max(s.opt.Steps/nb, 1)
	useCache := s.info.BlockSize > 0 && !s.opt.NoCache
	res := &GenResult{Cached: useCache}
	if useCache {
		if s.cache != nil {
			s.cache.Free(s.m.BE)
		}
		s.cache = s.m.NewKVCache(s.B, s.N)
		s.cachedTo = 0
	}
	for bi := 0; bi < nb; bi++ {
		lo, hi := s.blockEdge[bi], s.blockEdge[bi+1]
		counts := make([][]int, s.B)
		for r := range counts {
			counts[r] = transferCounts(s.masked(r, lo, hi), spb)
		}
		for step := 0; ; step++ {
			if !s.checkLive() {
				return nil, ErrCancelled
			}
			if s.opt.Threshold == 0 && s.opt.Alg != AlgRandom && step >= spb {
				break
			}
			if !s.anyMasked(lo, hi) {
				break
			}
			if s.opt.Alg == AlgRandom && step >= spb {
				break
			}
			s.collect(lo, hi)
			if err := s.score(lo, hi, useCache); err != nil {
				return nil, err
			}
			res.Forward++
			s.reveal(lo, hi, step, spb, counts)
			res.Steps++
			if s.opt.Observe != nil {
				s.opt.Observe(res.Steps, s.x)
			}
		}
		if s.opt.OnBlock != nil {
			s.opt.OnBlock(hi, s.x)
		}
		if s.opt.StopAtEOS && s.allEnded(hi) {
			break
		}
	}
	res.Tokens = make([][]int32, s.B)
	for r := range s.x {
		out := s.x[r][s.P:]
		if s.opt.StopAtEOS {
			for i, t := range out {
				if s.isEOS(t) {
					out = out[:i]
					break
				}
			}
		}
		for len(out) > 0 && s.isEOS(out[len(out)-1]) {
			out = out[:len(out)-1]
		}
		res.Tokens[r] = append([]int32(nil), out...)
	}
	res.Seconds = time.Since(t0).Seconds()
	return res, s.m.BE.Err()
}

func (s *Sampler) isEOS(t int32) bool {
	for _, e := range s.opt.EOS {
		if e == t {
			return true
		}
	}
	return false
}

// checkLive stops the rows of cancelled groups and reports whether any row
// is left.
func (s *Sampler) checkLive() bool {
	any := false
	for r, d := range s.done {
		if s.live[r] && d != nil {
			select {
			case <-d:
				s.live[r] = false
			default:
			}
		}
		any = any || s.live[r]
	}
	return any
}

// allEnded reports whether every live row has an EOS before position hi.
func (s *Sampler) allEnded(hi int) bool {
	for r := range s.x {
		if !s.live[r] {
			continue
		}
		ended := false
		for i := s.P; i < hi; i++ {
			if s.isEOS(s.x[r][i]) {
				ended = true
				break
			}
		}
		if !ended {
			return false
		}
	}
	return true
}

func (s *Sampler) masked(r, lo, hi int) int {
	n := 0
	for i := lo; i < hi; i++ {
		if s.x[r][i] == s.info.MaskID {
			n++
		}
	}
	return n
}

func (s *Sampler) anyMasked(lo, hi int) bool {
	for r := range s.x {
		if s.live[r] && s.masked(r, lo, hi) > 0 {
			return true
		}
	}
	return false
}

// transferCounts spreads n reveals over steps as LLaDA does: n/steps each,
// one more in each of the first n%steps steps.
func transferCounts(n, steps int) []int {
	c := make([]int, steps)
	for i := range c {
		c[i] = n / steps
		if i < n%steps {
			c[i]++
		}
	}
	return c
}

// collect lists the masked positions of the block [lo, hi) of every live
// row.
func (s *Sampler) collect(lo, hi int) {
	s.cand = s.cand[:0]
	for r := range s.x {
		if !s.live[r] {
			continue
		}
		for i := lo; i < hi; i++ {
			if s.x[r][i] == s.info.MaskID {
				s.cand = append(s.cand, candidate{row: r, pos: i})
			}
		}
	}
}

// forward computes the logits of every masked position of the block [lo,
// hi) into s.logits (one row per candidate, in s.cand order).
func (s *Sampler) forward(lo, hi int, useCache bool) error {
	m, be := s.m, s.m.BE
	V := m.Cfg.Vocab
	vis := s.info.Visibility()
	var a *model.Activations
	var off int // absolute position of the first row of a
	if useCache {
		b := s.info.BlockSize
		start := lo / b * b
		if s.cachedTo < start {
			// Finished blocks are final: their keys and values are computed
			// once, and under the block-causal rule they never change. With
			// shift, the block's first position reads the logits of the
			// last finished one, which are final too: keep them.
			pre := s.activations(start - s.cachedTo)
			s.fill(pre, s.cachedTo)
			pre.ScoreRows(0)
			if s.info.Shift {
				pre.ScoreRows(s.B)
				for r := 0; r < s.B; r++ {
					pre.Rows[r], pre.Targets[r] = int32(r*pre.L+pre.L-1), -1
				}
			}
			pre.Upload(be)
			m.ForwardCached(pre, s.cache, s.cachedTo, vis)
			if s.info.Shift {
				if cap(s.prev) < s.B*V {
					s.prev = make([]float32, s.B*V)
				}
				s.prev = s.prev[:s.B*V]
				be.Download(s.prev, pre.Logits.Slice(0, s.B*V))
			}
			s.cachedTo = start
		}
		a = s.activations(hi - start)
		off = start
	} else {
		a = s.activations(s.N)
	}
	s.fill(a, off)
	a.ScoreRows(len(s.cand))
	n := 0
	for _, c := range s.cand {
		p := c.pos - off
		if s.info.Shift {
			p--
		}
		if p < 0 {
			continue // the last finished position, kept in s.prev
		}
		a.Rows[n], a.Targets[n] = int32(c.row*a.L+p), -1
		n++
	}
	a.ScoreRows(n)
	a.Upload(be)
	if useCache {
		m.ForwardCached(a, s.cache, off, vis)
	} else {
		m.Forward(a, vis)
	}
	if cap(s.logits) < len(s.cand)*V {
		s.logits = make([]float32, len(s.cand)*V)
	}
	s.logits = s.logits[:len(s.cand)*V]
	be.Download(s.logits[:n*V], a.Logits.Slice(0, n*V))
	// Put the rows in candidate order, filling in the kept ones.
	j := n - 1
	for k := len(s.cand) - 1; k >= 0; k-- {
		c := s.cand[k]
		dst := s.logits[k*V : (k+1)*V]
		if c.pos-off-btoi(s.info.Shift) < 0 {
			copy(dst, s.prev[c.row*V:(c.row+1)*V])
			continue
		}
		if j != k {
			copy(dst, s.logits[j*V:(j+1)*V])
		}
		j--
	}
	return be.Err()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// fill copies positions [off, off+a.L) of every row into a.
func (s *Sampler) fill(a *model.Activations, off int) {
	for r := range s.x {
		copy(a.IDs[r*a.L:(r+1)*a.L], s.x[r][off:off+a.L])
		for i := 0; i < a.L; i++ {
			a.Pos[r*a.L+i] = int32(off + i)
		}
	}
}

// reveal picks tokens and confidences for the candidates and unmasks the
// chosen ones.
func (s *Sampler) reveal(lo, hi, step, spb int, counts [][]int) {
	V := s.m.Cfg.Vocab
	for k := range s.cand {
		tok, conf := s.pick(s.rngs[s.cand[k].row], s.logits[k*V:(k+1)*V])
		s.cand[k].tok, s.cand[k].conf = tok, conf
	}
	for r := 0; r < s.B; r++ {
		var mine []candidate
		for _, c := range s.cand {
			if c.row == r {
				mine = append(mine, c)
			}
		}
		if len(mine) == 0 {
			continue
		}
		for _, c := range s.choose(s.rngs[r], mine, step, spb, counts[r]) {
			s.x[r][c.pos] = c.tok
		}
	}
}

// choose returns the candidates of one row to reveal at this step.
func (s *Sampler) choose(rng *rand.Rand, c []candidate, step, spb int, counts []int) []candidate {
	o := &s.opt
	if o.Alg == AlgRandom {
		// Dream's origin: times linspace(1, eps, steps+1); reveal each with
		// probability 1 - s/t, everything at the last step.
		if step >= spb-1 {
			return c
		}
		t := 1 - float64(step)*(1-o.Eps)/float64(spb)
		sNext := 1 - float64(step+1)*(1-o.Eps)/float64(spb)
		var out []candidate
		for _, x := range c {
			if rng.Float64() < 1-sNext/t {
				out = append(out, x)
			}
		}
		return out
	}
	if o.Threshold > 0 {
		var out []candidate
		best := 0
		for i, x := range c {
			if x.conf > o.Threshold {
				out = append(out, x)
			}
			if x.conf > c[best].conf {
				best = i
			}
		}
		if len(out) == 0 {
			out = append(out, c[best])
		}
		return out
	}
	k := 0
	if step < len(counts) {
		k = counts[step]
	}
	k = min(k, len(c))
	if k == 0 {
		return nil
	}
	if o.AlgTemp > 0 {
		return s.drawPositions(rng, c, k)
	}
	sort.SliceStable(c, func(a, b int) bool { return c[a].conf > c[b].conf })
	return c[:k]
}

// drawPositions samples k candidates without replacement with
// probabilities softmax(conf / AlgTemp) (Dream's alg_temp).
func (s *Sampler) drawPositions(rng *rand.Rand, c []candidate, k int) []candidate {
	w := make([]float64, len(c))
	mx := math.Inf(-1)
	for _, x := range c {
		mx = math.Max(mx, x.conf/s.opt.AlgTemp)
	}
	for i, x := range c {
		w[i] = math.Exp(x.conf/s.opt.AlgTemp - mx)
	}
	var out []candidate
	for len(out) < k {
		var tot float64
		for _, v := range w {
			tot += v
		}
		u := rng.Float64() * tot
		j := 0
		for ; j < len(w)-1; j++ {
			u -= w[j]
			if u <= 0 && w[j] > 0 {
				break
			}
		}
		for w[j] == 0 { // float round-off: take the last live one
			j--
		}
		out = append(out, c[j])
		w[j] = 0
	}
	return out
}

// pick chooses a token for one masked position and its confidence: the
// argmax of logits plus temperature-scaled Gumbel noise in float64 (LLaDA),
// over the top-k / top-p set; confidence from the sampling distribution.
func (s *Sampler) pick(rng *rand.Rand, logits []float32) (int32, float64) {
	o := &s.opt
	V := len(logits)
	if cap(s.probs) < V {
		s.probs, s.order = make([]float64, V), make([]int, V)
	}
	p := s.probs[:V]
	// The mask token is never a candidate: revealing it would leave the
	// position masked.
	model.Sampling{Temperature: o.Temperature, TopK: o.TopK, TopP: o.TopP}.Distribution(p, s.order[:V], logits, int(s.info.MaskID))
	tok := 0
	if o.Temperature <= 0 {
		for i, v := range p {
			if v > p[tok] {
				tok = i
			}
		}
	} else {
		best := math.Inf(-1)
		for i, v := range p {
			if v == 0 {
				continue
			}
			g := float64(logits[i]) - o.Temperature*math.Log(-math.Log(rng.Float64()))
			if g > best {
				best, tok = g, i
			}
		}
	}
	var conf float64
	switch o.Alg {
	case AlgMargin:
		var p1, p2 float64
		for _, v := range p {
			if v > p1 {
				p1, p2 = v, p1
			} else if v > p2 {
				p2 = v
			}
		}
		conf = p1 - p2
	case AlgEntropy:
		for _, v := range p {
			if v > 0 {
				conf += v * math.Log(v)
			}
		}
	default:
		conf = p[tok]
	}
	return int32(tok), conf
}
