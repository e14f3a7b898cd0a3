// Package diffusion is the masked-diffusion objective (DESIGN.md §3): forward
// noising, shift, loss weights (1/t, CART, uniform), the Monte-Carlo ELBO,
// and the samplers that decode from a diffusion model.
package diffusion

import (
	"fmt"
	"math/rand/v2"
)

// Weighting of the per-token cross-entropy.
type Weighting string

// The weightings of DESIGN.md §3.
const (
	ELBO    Weighting = "elbo"    // 1/t (MDLM, LLaDA, DiffuLLaMA)
	CART    Weighting = "cart"    // Dream's context-adaptive token weights
	Uniform Weighting = "uniform" // 1
)

// Norm is the loss normaliser.
type Norm string

// The normalisers of DESIGN.md §3.
const (
	NormMasked Norm = "masked" // number of masked tokens (DiffuLLaMA, Dream)
	NormTokens Norm = "tokens" // B*L (the ELBO scale of LLaDA, MDLM)
)

// Objective is the masked-diffusion loss of a run.
type Objective struct {
	MaskID    int32
	Shift     bool // position n is scored by the logits of n-1
	Weighting Weighting
	CartP     float64
	Norm      Norm
	TMin      float64
	// TMax, when > 0, is the top of t's range (e.g. LLaDA 2.0's SFT range
	// [0.3, 0.8]); 0 means 1.
	TMax float64
}

// Validate rejects unknown settings.
func (o *Objective) Validate() error {
	switch o.Weighting {
	case ELBO, Uniform:
	case CART:
		if !(o.CartP > 0 && o.CartP < 1) {
			return fmt.Errorf("--cart-p must be in (0, 1), got %g", o.CartP)
		}
	default:
		return fmt.Errorf("unknown weighting %q (elbo, cart, uniform)", o.Weighting)
	}
	switch o.Norm {
	case NormMasked, NormTokens:
	default:
		return fmt.Errorf("unknown loss normalisation %q (masked, tokens)", o.Norm)
	}
	if !(o.TMin > 0 && o.TMin < 1) {
		return fmt.Errorf("--t-min must be in (0, 1), got %g", o.TMin)
	}
	if o.TMax != 0 && !(o.TMax > o.TMin && o.TMax <= 1) {
		return fmt.Errorf("the top of the t range must be in (%g, 1], got %g", o.TMin, o.TMax)
	}
	return nil
}

// Batch is the host-side state of one micro-batch, allocated once.
type Batch struct {
	B, L   int
	X0, XT []int32
	Masked []bool
	// Fixed excludes positions from masking (prompt tokens, padding); nil
	// means every position is maskable (except position 0 with shift).
	Fixed []bool
	// T is the noise level: one per row, or, with TBlock > 0, one per
	// block of TBlock positions (T[r*L/TBlock + i/TBlock]).
	T      []float64
	TBlock int
	// Count, when set per row, masks exactly that many positions (LLaDA's
	// stratified count) and weights them n/k instead of 1/t.
	Count []int

	// Scored rows for the engine: logit row, target token and weight.
	Rows, Targets []int32
	Weights       []float32
	NMasked       int
	NMaskable     int

	left, right []float64 // CART scratch
	order       []int
}

// NewBatch allocates a batch of B rows of L tokens.
func NewBatch(B, L int) *Batch {
	return &Batch{B: B, L: L, X0: make([]int32, B*L), XT: make([]int32, B*L), Masked: make([]bool, B*L),
		T: make([]float64, B), Rows: make([]int32, B*L), Targets: make([]int32, B*L), Weights: make([]float32, B*L),
		left: make([]float64, L+1), right: make([]float64, L+1), order: make([]int, L)}
}

// SetTimeBlock makes t per block of n positions (0: per row).
func (b *Batch) SetTimeBlock(n int) {
	b.TBlock = n
	k := b.B
	if n > 0 {
		k = b.B * ((b.L + n - 1) / n)
	}
	if cap(b.T) < k {
		b.T = make([]float64, k)
	}
	b.T = b.T[:k]
}

// tAt is the noise level of position i (flat index).
func (b *Batch) tAt(i int) float64 {
	if b.TBlock > 0 {
		nb := (b.L + b.TBlock - 1) / b.TBlock
		return b.T[i/b.L*nb+i%b.L/b.TBlock]
	}
	return b.T[i/b.L]
}

// DrawTimes draws every t ~ U(TMin, TMax or 1); antithetic spreads them
// evenly, t_k from (u + k/K) mod 1.
func (o *Objective) DrawTimes(rng *rand.Rand, b *Batch, antithetic bool) {
	top := 1.0
	if o.TMax > 0 {
		top = o.TMax
	}
	u0 := rng.Float64()
	for k := range b.T {
		u := rng.Float64()
		if antithetic {
			u = u0 + float64(k)/float64(len(b.T))
			u -= float64(int(u))
		}
		b.T[k] = o.TMin + (top-o.TMin)*u
	}
}

func (o *Objective) maskable(b *Batch, i int) bool {
	if o.Shift && i%b.L == 0 {
		return false
	}
	return b.Fixed == nil || !b.Fixed[i]
}

// Mask makes XT from X0: each maskable position becomes the mask token
// independently with probability t of its row, or, where Count is set,
// exactly Count[r] maskable positions chosen uniformly.
func (o *Objective) Mask(rng *rand.Rand, b *Batch) {
	b.NMasked, b.NMaskable = 0, 0
	for r := 0; r < b.B; r++ {
		base := r * b.L
		if b.Count != nil {
			n := 0
			for i := 0; i < b.L; i++ {
				b.Masked[base+i] = false
				if o.maskable(b, base+i) {
					b.order[n] = i
					n++
				}
			}
			k := min(b.Count[r], n)
			for j := 0; j < k; j++ { // partial Fisher-Yates
				s := j + rng.IntN(n-j)
				b.order[j], b.order[s] = b.order[s], b.order[j]
				b.Masked[base+b.order[j]] = true
			}
			b.NMaskable += n
		} else {
			for i := 0; i < b.L; i++ {
				ok := o.maskable(b, base+i)
				b.Masked[base+i] = ok && rng.Float64() < b.tAt(base+i)
				if ok {
					b.NMaskable++
				}
			}
		}
		for i := 0; i < b.L; i++ {
			b.XT[base+i] = b.X0[base+i]
			if b.Masked[base+i] {
				b.XT[base+i] = o.MaskID
				b.NMasked++
			}
		}
	}
}

// Score lists the masked positions for the loss: the logit row that scores
// each (n-1 with shift), its target x0[n] and weight w_n, and returns the
// normaliser. The number of entries is b.NMasked.
func (o *Objective) Score(b *Batch) (norm float64) {
	k := 0
	for r := 0; r < b.B; r++ {
		base := r * b.L
		if o.Weighting == CART {
			o.cartRow(b, base)
		}
		nMaskable := 0
		if b.Count != nil {
			for i := 0; i < b.L; i++ {
				if o.maskable(b, base+i) {
					nMaskable++
				}
			}
		}
		for i := 0; i < b.L; i++ {
			n := base + i
			if !b.Masked[n] {
				continue
			}
			row := n
			if o.Shift {
				row = n - 1
			}
			var w float64
			switch o.Weighting {
			case ELBO:
				if b.Count != nil {
					w = float64(nMaskable) / float64(b.Count[r])
				} else {
					w = 1 / b.tAt(n)
				}
			case CART:
				w = 0.5 * o.CartP * (b.left[i] + b.right[i])
			case Uniform:
				w = 1
			}
			b.Rows[k], b.Targets[k], b.Weights[k] = int32(row), b.X0[n], float32(w)
			k++
		}
	}
	if o.Norm == NormTokens {
		return float64(b.B * b.L)
	}
	return float64(max(k, 1))
}

// cartRow fills left[i] = sum over unmasked j < i of (1-p)^(i-j-1) and
// right[i] likewise for j > i, so that w_i = p/2 (left + right) is Dream's
// sum over unmasked j != i of p (1-p)^(|i-j|-1), in O(L).
func (o *Objective) cartRow(b *Batch, base int) {
	q := 1 - o.CartP
	b.left[0] = 0
	for i := 1; i < b.L; i++ {
		b.left[i] = q * b.left[i-1]
		if !b.Masked[base+i-1] {
			b.left[i]++
		}
	}
	b.right[b.L-1] = 0
	for i := b.L - 2; i >= 0; i-- {
		b.right[i] = q * b.right[i+1]
		if !b.Masked[base+i+1] {
			b.right[i]++
		}
	}
}
