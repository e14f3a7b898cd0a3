package diffusion

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// EvalOptions controls Evaluate.
type EvalOptions struct {
	MC         int       // Monte-Carlo passes over the rows
	Seed       uint64    // fixes t and masks so runs are comparable
	BatchSize  int       // rows per forward
	Stratified bool      // LLaDA's stratified count instead of Bernoulli(t) masks
	AccuracyAt []float64 // t values for masked-token accuracy
	// Stop, when not nil, is asked before every batch; an error from it
	// ends the evaluation with that error.
	Stop func() error
	// Block > 0 evaluates a block-diffusion model the way it trains: rows
	// [xt ; x0] under kernels.BlockDiffusion (vis must be that rule).
	Block int
	// Fixed, when not nil, fills row i's positions that are never masked
	// or scored (SFT prompts): the bound is then per response token.
	Fixed func(i int, fixed []bool)
}

// DefaultAccuracyAt are the noise levels of the accuracy report.
var DefaultAccuracyAt = []float64{0.15, 0.5, 0.9}

// EvalResult is the diffusion likelihood bound of a model on some rows.
type EvalResult struct {
	NELBO    float64         `json:"nelbo"`     // nats per maskable token (upper bound on NLL)
	PPLBound float64         `json:"ppl_bound"` // exp(NELBO)
	Tokens   int64           `json:"tokens"`    // maskable tokens per pass
	Rows     int             `json:"rows"`
	MC       int             `json:"mc"`
	Accuracy []AccuracyPoint `json:"accuracy"`
}

// AccuracyPoint is the masked-token accuracy at one noise level.
type AccuracyPoint struct {
	T        float64 `json:"t"`
	Accuracy float64 `json:"accuracy"`
	Masked   int64   `json:"masked"`
}

// RowSource fills row i: L token ids and their document ids.
type RowSource func(i int, ids, docs []int32)

// Evaluate computes the Monte-Carlo NELBO (DESIGN.md §3): per pass, t
// antithetic across the rows of each batch, each maskable token masked with
// probability t (or LLaDA's stratified count), sum of CE/t over masked
// positions divided by the number of maskable positions; averaged over
// passes. The objective supplies the mask id and shift; its weighting is
// ignored (the bound needs 1/t).
func Evaluate(m *model.Model, rows RowSource, nRows, L int, obj Objective, vis kernels.Visibility, opt EvalOptions) (EvalResult, error) {
	if nRows <= 0 {
		return EvalResult{}, fmt.Errorf("eval: no rows to evaluate (is the held-out split empty?)")
	}
	if opt.MC <= 0 {
		opt.MC = 1
	}
	B := min(max(opt.BatchSize, 1), nRows)
	o := obj
	o.Weighting, o.Norm = ELBO, NormTokens
	width := L
	if opt.Block > 0 {
		width = 2 * L
	}
	a := m.NewActivations(B, width, false)
	defer a.Free(m.BE)
	b := NewBatch(B, L)
	if opt.Fixed != nil {
		b.Fixed = make([]bool, B*L)
	}
	docs := make([]int32, B*L)
	rowsAt := make([]int32, B*width)
	res := EvalResult{Rows: nRows, MC: opt.MC}

	// run scores every batch of rows once under draw, which sets t (and
	// counts) for the batch; it returns the summed loss and hit count.
	run := func(rng *rand.Rand, draw func(rng *rand.Rand, b *Batch, n int)) (loss float64, maskable, masked, correct int64, err error) {
		for start := 0; start < nRows; start += B {
			if opt.Stop != nil {
				if err := opt.Stop(); err != nil {
					return 0, 0, 0, 0, err
				}
			}
			n := min(B, nRows-start)
			for r := 0; r < B; r++ {
				if r < n {
					rows(start+r, b.X0[r*L:(r+1)*L], docs[r*L:(r+1)*L])
					if b.Fixed != nil {
						opt.Fixed(start+r, b.Fixed[r*L:(r+1)*L])
					}
				} else { // pad a short last batch with copies; they are not counted
					copy(b.X0[r*L:(r+1)*L], b.X0[:L])
					copy(docs[r*L:(r+1)*L], docs[:L])
					if b.Fixed != nil {
						copy(b.Fixed[r*L:(r+1)*L], b.Fixed[:L])
					}
				}
			}
			draw(rng, b, n)
			o.Mask(rng, b)
			o.Score(b)
			if opt.Block > 0 {
				o.TwoStream(b, opt.Block, a.IDs, a.Pos, docs, a.Docs, rowsAt)
			} else {
				copy(a.IDs, b.XT)
				copy(a.Docs, docs)
				copy(rowsAt, b.Rows[:b.NMasked])
			}
			a.ScoreRows(b.NMasked)
			k := 0
			for j := 0; j < b.NMasked; j++ {
				if int(rowsAt[j])/width < n {
					a.Rows[k], a.Targets[k], a.Weights[k] = rowsAt[j], b.Targets[j], b.Weights[j]
					k++
				}
			}
			a.ScoreRows(k)
			a.Upload(m.BE)
			m.Forward(a, vis)
			s, c := m.Loss(a, 1, false)
			loss += s
			correct += int64(c)
			masked += int64(k)
			for r := 0; r < n; r++ {
				for i := 0; i < L; i++ {
					if o.maskable(b, r*L+i) {
						maskable++
					}
				}
			}
			if err := m.BE.Err(); err != nil {
				return 0, 0, 0, 0, err
			}
		}
		return loss, maskable, masked, correct, nil
	}

	counts := make([]int, B)
	var total float64
	for pass := 0; pass < opt.MC; pass++ {
		rng := rand.New(rand.NewPCG(opt.Seed, uint64(pass)))
		draw := func(rng *rand.Rand, b *Batch, n int) {
			b.Count = nil
			o.DrawTimes(rng, b, true)
			if opt.Stratified {
				// Counts spread evenly over 1..maskable across the rows.
				nm := L
				if o.Shift {
					nm--
				}
				b.Count = counts
				u := rng.Float64()
				for r := range b.Count {
					f := u + float64(r)/float64(b.B)
					f -= math.Floor(f)
					if b.Fixed != nil { // spread over this row's maskable positions
						nm = 0
						for i := 0; i < L; i++ {
							if o.maskable(b, r*L+i) {
								nm++
							}
						}
					}
					b.Count[r] = 1 + int(f*float64(nm))
				}
			}
		}
		loss, maskable, _, _, err := run(rng, draw)
		if err != nil {
			return res, err
		}
		total += loss / float64(maskable)
		res.Tokens = maskable
	}
	res.NELBO = total / float64(opt.MC)
	res.PPLBound = math.Exp(res.NELBO)

	for i, t := range opt.AccuracyAt {
		rng := rand.New(rand.NewPCG(opt.Seed^0xacc, uint64(i)))
		_, _, masked, correct, err := run(rng, func(_ *rand.Rand, b *Batch, _ int) {
			b.Count = nil
			for k := range b.T {
				b.T[k] = t
			}
		})
		if err != nil {
			return res, err
		}
		acc := 0.0
		if masked > 0 {
			acc = float64(correct) / float64(masked)
		}
		res.Accuracy = append(res.Accuracy, AccuracyPoint{T: t, Accuracy: acc, Masked: masked})
	}
	return res, nil
}
