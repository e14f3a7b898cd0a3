package diffusion

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// ChoiceOptions controls ChoiceScorer.
type ChoiceOptions struct {
	MC   int    // Monte-Carlo samples per continuation
	Seed uint64 // with the segment's key, fixes every mask
	// Stratified uses LLaDA's count: sample j masks exactly k_j of the n
	// continuation tokens, k_j spread evenly over 1..n, weight n/k_j.
	// Otherwise t_j is antithetic over the samples and each token is
	// masked with probability t_j, weight 1/t_j. Block models always use
	// per-block t (the block-conditioned bound).
	Stratified bool
	TMin       float64
	B, L       int // rows of L positions per forward pass
}

// ChoiceScorer estimates the diffusion ELBO of continuations given their
// clean context (LLaDA's conditional likelihood estimator): the context is
// never masked, the continuation is noised MC times and the masked tokens
// scored with the ELBO weights, under the model's final attention rule.
// Many (segment, sample) rows share each forward pass: they are packed into
// rows with document masking and positions restarting at 0; for a block
// model each starts on a block boundary and the rows are laid out [xt ; x0]
// under the block-diffusion rule, so each block of the continuation is
// bounded given the clean blocks before it.
type ChoiceScorer struct {
	m    *model.Model
	info Info
	opt  ChoiceOptions
	a    *model.Activations
	// Tokens counts the tokens run through the model so far (every sample).
	Tokens int64
}

// NewChoiceScorer allocates buffers.
func NewChoiceScorer(m *model.Model, info Info, opt ChoiceOptions) (*ChoiceScorer, error) {
	if opt.MC <= 0 {
		opt.MC = 1
	}
	if opt.TMin <= 0 {
		opt.TMin = 1e-3
	}
	if opt.B <= 0 || opt.L <= 1 {
		return nil, fmt.Errorf("choice scorer: rows %d x %d", opt.B, opt.L)
	}
	width := opt.L
	if b := info.BlockSize; b > 0 {
		if opt.L%b != 0 {
			return nil, fmt.Errorf("--seq-len %d is not a multiple of the model's block size %d", opt.L, b)
		}
		width = 2 * opt.L
	}
	return &ChoiceScorer{m: m, info: info, opt: opt, a: m.NewActivations(opt.B, width, false)}, nil
}

// Free returns the buffers.
func (s *ChoiceScorer) Free() { s.a.Free(s.m.BE) }

// masking is one noised copy of a segment: which continuation positions
// are masked and their weights.
type masking struct {
	seg    int
	masked []int // positions within the segment
	w      []float64
}

// draw makes the MC noised copies of a segment from its own random stream.
func (s *ChoiceScorer) draw(idx int, seg model.Segment, key uint64, out []masking) []masking {
	rng := rand.New(rand.NewPCG(s.opt.Seed, key))
	P, n, mc := seg.Context, len(seg.Tokens)-seg.Context, s.opt.MC
	spread := func(u float64, j int) float64 {
		f := u + float64(j)/float64(mc)
		return f - math.Floor(f)
	}
	tOf := func(f float64) float64 { return s.opt.TMin + (1-s.opt.TMin)*f }
	if b := s.info.BlockSize; b > 0 {
		// One antithetic t per block of positions [kb, (k+1)b) holding
		// continuation tokens.
		nb := (len(seg.Tokens) + b - 1) / b
		us := make([]float64, nb)
		for k := range us {
			us[k] = rng.Float64()
		}
		for j := 0; j < mc; j++ {
			mk := masking{seg: idx}
			for i := P; i < len(seg.Tokens); i++ {
				t := tOf(spread(us[i/b], j))
				if rng.Float64() < t {
					mk.masked, mk.w = append(mk.masked, i), append(mk.w, 1/t)
				}
			}
			out = append(out, mk)
		}
		return out
	}
	u := rng.Float64()
	order := make([]int, n)
	for j := 0; j < mc; j++ {
		mk := masking{seg: idx}
		if s.opt.Stratified {
			k := 1 + int(spread(u, j)*float64(n))
			for i := range order {
				order[i] = P + i
			}
			for i := 0; i < k; i++ { // partial Fisher-Yates
				r := i + rng.IntN(n-i)
				order[i], order[r] = order[r], order[i]
				mk.masked, mk.w = append(mk.masked, order[i]), append(mk.w, float64(n)/float64(k))
			}
		} else {
			t := tOf(spread(u, j))
			for i := P; i < len(seg.Tokens); i++ {
				if rng.Float64() < t {
					mk.masked, mk.w = append(mk.masked, i), append(mk.w, 1/t)
				}
			}
		}
		out = append(out, mk)
	}
	return out
}

// LogLikelihood returns the ELBO estimate (a lower bound on log p, in
// expectation) of each segment's continuation given its context. keys
// seed each segment's masks (segments with equal keys share their
// strata), so a result does not depend on how segments are grouped.
func (s *ChoiceScorer) LogLikelihood(segs []model.Segment, keys []uint64) ([]float64, error) {
	L, b := s.opt.L, s.info.BlockSize
	var copies []masking
	for i := range segs {
		t, err := model.Truncate(segs[i], L)
		if err != nil {
			return nil, err
		}
		segs[i] = t
		copies = s.draw(i, t, keys[i], copies)
	}
	lens := make([]int, len(copies))
	for i, c := range copies {
		lens[i] = len(segs[c.seg].Tokens)
	}
	place, nRows, err := model.Pack(lens, L, max(b, 1))
	if err != nil {
		return nil, err
	}
	a := s.a
	width := a.L
	vis := kernels.Visibility{Mode: kernels.Bidirectional, DocMask: true}
	if b > 0 {
		vis = kernels.Visibility{Mode: kernels.BlockDiffusion, Block: b, Half: L, DocMask: true}
	}
	sums := make([]float64, len(segs))
	owner := make([]int32, 0, a.T)
	for r0, i0 := 0, 0; r0 < nRows; r0 += s.opt.B {
		for i := range a.IDs {
			a.IDs[i], a.Pos[i], a.Docs[i] = 0, 0, model.PadDoc
		}
		owner = owner[:0]
		a.ScoreRows(a.T)
		k, i := 0, i0
		for ; i < len(copies) && place[i].Row < r0+s.opt.B; i++ {
			c, p := copies[i], place[i]
			seg := segs[c.seg]
			base := (p.Row-r0)*width + p.Off
			for j, t := range seg.Tokens {
				a.IDs[base+j], a.Pos[base+j], a.Docs[base+j] = t, int32(j), int32(i)
				if b > 0 { // the clean copy
					a.IDs[base+L+j], a.Pos[base+L+j], a.Docs[base+L+j] = t, int32(j), int32(i)
				}
			}
			for q, n := range c.masked {
				a.IDs[base+n] = s.info.MaskID
				row := base + n
				if s.info.Shift {
					row--
					if b > 0 && n%b == 0 {
						row += L // a block's first token is read from the clean copy before it
					}
				}
				a.Rows[k], a.Targets[k], a.Weights[k] = int32(row), seg.Tokens[n], float32(c.w[q])
				owner = append(owner, int32(c.seg))
				k++
			}
			s.Tokens += int64(len(seg.Tokens))
		}
		i0 = i
		if k == 0 {
			continue
		}
		a.ScoreRows(k)
		a.Upload(s.m.BE)
		s.m.Forward(a, vis)
		s.m.Loss(a, 1, false)
		if err := s.m.BE.Err(); err != nil {
			return nil, err
		}
		for j, l := range a.RowLosses() {
			sums[owner[j]] += float64(l)
		}
	}
	for i := range sums {
		sums[i] = -sums[i] / float64(s.opt.MC)
	}
	return sums, nil
}
