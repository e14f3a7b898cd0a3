package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/dllm-dev/dllm/kernels"
)

// Sampling turns logits into a token: greedy at temperature 0, else
// softmax(logits/temperature) restricted by top-k and top-p.
type Sampling struct {
	Temperature float64
	TopK        int
	TopP        float64
}

// Distribution fills p with softmax(logits / T) (T = 1 at temperature 0),
// keeps only the top-k tokens and the smallest set holding top-p of the
// mass, zeroes token exclude (-1: none) and normalises p to sum 1. order is
// scratch of the same length.
func (s Sampling) Distribution(p []float64, order []int, logits []float32, exclude int) {
	temp := s.Temperature
	if temp <= 0 {
		temp = 1
	}
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	for i, v := range logits {
		p[i] = math.Exp((float64(v) - mx) / temp)
		sum += p[i]
	}
	if exclude >= 0 {
		sum -= p[exclude]
		p[exclude] = 0
	}
	n := len(p)
	if s.TopK > 0 && s.TopK < n || s.TopP > 0 && s.TopP < 1 {
		for i := range order {
			order[i] = i
		}
		sort.Slice(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
		keep := n
		if s.TopK > 0 && s.TopK < keep {
			keep = s.TopK
		}
		if s.TopP > 0 && s.TopP < 1 {
			var c float64
			for i := 0; i < keep; i++ {
				c += p[order[i]] / sum
				if c >= s.TopP {
					keep = i + 1
					break
				}
			}
		}
		for _, i := range order[keep:] {
			sum -= p[i]
			p[i] = 0
		}
	}
	for i := range p {
		p[i] /= sum
	}
}

// Sampler draws tokens from host logits, reusing its scratch.
type Sampler struct {
	S     Sampling
	Rng   *rand.Rand
	probs []float64
	order []int
}

// Pick returns the chosen token of one row of logits.
func (s *Sampler) Pick(logits []float32) int {
	if s.S.Temperature <= 0 {
		return Argmax(logits)
	}
	n := len(logits)
	if cap(s.probs) < n {
		s.probs, s.order = make([]float64, n), make([]int, n)
	}
	p := s.probs[:n]
	s.S.Distribution(p, s.order[:n], logits, -1)
	u := s.Rng.Float64()
	last := 0
	for i, v := range p {
		if v == 0 {
			continue
		}
		last = i
		if u -= v; u <= 0 {
			return i
		}
	}
	return last
}

// Argmax is the index of the largest value (the first on ties).
func Argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// ARGenerator decodes left to right with a KV cache: the prompt in one
// forward, then one position per step.
type ARGenerator struct {
	m       *Model
	cache   *KVCache
	prefill *Activations
	step    *Activations
	logits  []float32
	maxLen  int
}

// NewARGenerator prepares buffers for prompts of up to promptLen tokens and
// sequences of up to maxLen tokens (batch 1).
func (m *Model) NewARGenerator(promptLen, maxLen int) *ARGenerator {
	g := &ARGenerator{m: m, cache: m.NewKVCache(1, maxLen), maxLen: maxLen,
		prefill: m.NewActivations(1, max(promptLen, 1), false), step: m.NewActivations(1, 1, false),
		logits: make([]float32, m.Cfg.Vocab)}
	return g
}

// Free returns the buffers.
func (g *ARGenerator) Free() {
	g.cache.Free(g.m.BE)
	g.prefill.Free(g.m.BE)
	g.step.Free(g.m.BE)
}

// Generate extends prompt by up to n tokens, stopping after a token for
// which stop returns true. It returns the new tokens.
func (g *ARGenerator) Generate(prompt []int32, n int, s *Sampler, stop func(int32) bool) ([]int32, error) {
	m, be := g.m, g.m.BE
	if len(prompt) == 0 {
		return nil, fmt.Errorf("generate: empty prompt (AR decoding needs at least one token, e.g. BOS)")
	}
	if len(prompt) > g.prefill.L {
		return nil, fmt.Errorf("generate: prompt of %d tokens, buffers for %d", len(prompt), g.prefill.L)
	}
	if len(prompt)+n > g.maxLen {
		n = g.maxLen - len(prompt)
	}
	causal := kernels.Visibility{Mode: kernels.Causal}
	// Prefill: only the last row's logits are needed.
	a := g.prefill
	if len(prompt) != a.L {
		a.Free(be)
		a = m.NewActivations(1, len(prompt), false)
		g.prefill = a
	}
	copy(a.IDs, prompt)
	for i := range a.Pos {
		a.Pos[i] = int32(i)
	}
	a.ScoreRows(1)[0] = int32(len(prompt) - 1)
	a.Upload(be)
	m.ForwardCached(a, g.cache, 0, causal)
	be.Download(g.logits, a.Logits.Slice(0, m.Cfg.Vocab))
	var out []int32
	pos := len(prompt)
	st := g.step
	for len(out) < n {
		tok := int32(s.Pick(g.logits))
		out = append(out, tok)
		if stop != nil && stop(tok) || len(out) == n {
			break
		}
		st.IDs[0], st.Pos[0] = tok, int32(pos)
		st.Upload(be)
		m.ForwardCached(st, g.cache, pos, causal)
		be.Download(g.logits, st.Logits.Slice(0, m.Cfg.Vocab))
		pos++
	}
	return out, be.Err()
}

// AROptions shape a batch of AR samples.
type AROptions struct {
	GenLen    int // new tokens per sample at most
	Batch     int // samples, one after the other; sample b draws from PCG(Seed, b)
	Seed      uint64
	Sampling  Sampling
	StopAtEOS bool    // end a sample at its first id in EOS (not kept)
	EOS       []int32 // the ids that end a sample
}

// ARResult are the samples (new tokens only) and the decoding time.
type ARResult struct {
	Tokens  [][]int32
	Seconds float64
}

// GenerateAR decodes opt.Batch samples continuing prompt left to right
// with a KV cache.
func (m *Model) GenerateAR(prompt []int32, opt AROptions) (*ARResult, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("AR decoding needs a prompt (the tokenizer adds BOS to text prompts)")
	}
	gen := m.NewARGenerator(len(prompt), len(prompt)+opt.GenLen)
	defer gen.Free()
	stop := func(t int32) bool {
		return opt.StopAtEOS && slices.Contains(opt.EOS, t)
	}
	res := &ARResult{}
	for b := 0; b < max(opt.Batch, 1); b++ {
		s := &Sampler{S: opt.Sampling, Rng: rand.New(rand.NewPCG(opt.Seed, uint64(b)))}
		t0 := time.Now()
		toks, err := gen.Generate(prompt, opt.GenLen, s, stop)
		if err != nil {
			return nil, err
		}
		res.Seconds += time.Since(t0).Seconds()
		if len(toks) > 0 && stop(toks[len(toks)-1]) {
			toks = toks[:len(toks)-1]
		}
		res.Tokens = append(res.Tokens, toks)
	}
	return res, nil
}
