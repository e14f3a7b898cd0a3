package convert

import (
	"math"
	"math/rand/v2"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// StepBatch is one micro-batch in engine terms: B*L token and document ids,
// and the scored rows with their targets and weights.
type StepBatch struct {
	IDs, Docs, Rows, Targets []int32
	Weights                  []float32
}

// RandomStepBatch draws random tokens, documents of docLen tokens and about
// half the rows scored with weights in [1, 2): the input of benchmarks and
// of backend comparisons.
func RandomStepBatch(rng *rand.Rand, B, L, vocab, docLen int) StepBatch {
	var b StepBatch
	for i := 0; i < B*L; i++ {
		b.IDs = append(b.IDs, int32(rng.IntN(vocab)))
		b.Docs = append(b.Docs, int32(i%L/docLen))
		if rng.IntN(2) == 0 {
			b.Rows = append(b.Rows, int32(i))
			b.Targets = append(b.Targets, int32(rng.IntN(vocab)))
			b.Weights = append(b.Weights, float32(1+rng.Float64()))
		}
	}
	return b
}

// Stepper is the bare optimizer step of a run: forward, weighted loss over
// the scored rows (normalised by their number; MoE: plus the config's
// router_aux_loss_coef times the load-balancing loss), backward, global-norm clip
// at 1 and AdamW (LR, default 1e-3; betas 0.9/0.95; weight decay 0.1 on
// everything).
// Benchmarks and backend comparisons use it; a conversion adds noising,
// schedules and parameter groups around the same calls.
type Stepper struct {
	LR   float32
	m    *model.Model
	acts *model.Activations
	opt  *AdamW
}

// NewStepper allocates gradients, activations for B x L and AdamW moments.
func NewStepper(m *model.Model, B, L int) *Stepper {
	return NewStepperWith(m, B, L, model.ActOptions{Training: true})
}

// NewStepperWith is NewStepper with activations kept as o says (recompute).
func NewStepperWith(m *model.Model, B, L int, o model.ActOptions) *Stepper {
	m.EnableGrads()
	o.Training = true
	s := &Stepper{LR: 1e-3, m: m, acts: m.NewActivationsWith(B, L, o), opt: NewAdamW(m, 0.9, 0.95, 1e-8, 0.1, true)}
	if me := m.Cfg.MoE; me != nil {
		s.acts.AuxCoef = me.AuxCoef // the config's router_aux_loss_coef
	}
	return s
}

// Free returns the buffers.
func (s *Stepper) Free() {
	s.acts.Free(s.m.BE)
	s.opt.Free()
}

// Step runs optimizer step number step (from 1) on b and returns the loss.
func (s *Stepper) Step(b StepBatch, vis kernels.Visibility, step int) (float64, error) {
	be, a := s.m.BE, s.acts
	copy(a.IDs, b.IDs)
	copy(a.Docs, b.Docs)
	copy(a.ScoreRows(len(b.Rows)), b.Rows)
	copy(a.Targets, b.Targets)
	copy(a.Weights, b.Weights)
	a.Upload(be)
	be.Zero(s.m.Grads)
	s.m.Forward(a, vis)
	norm := float64(max(len(b.Rows), 1))
	loss, _ := s.m.Loss(a, norm, true)
	if err := s.m.Backward(a, vis); err != nil {
		return math.NaN(), err
	}
	gn := math.Sqrt(be.SumSquares(s.m.Grads))
	s.opt.Step(float64(s.LR), step, float32(min(1, 1/gn)))
	return loss/norm + a.AuxCoef*a.AuxLoss(), be.Sync()
}
