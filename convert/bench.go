package convert

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// BenchResult is the speed of the training step.
type BenchResult struct {
	Backend      string  `json:"backend"`
	Batch        int     `json:"batch"`
	SeqLen       int     `json:"seq_len"`
	Params       int64   `json:"params"`
	Steps        int     `json:"steps"`
	MsPerStep    float64 `json:"ms_per_step"`
	TokensPerSec float64 `json:"tokens_per_second"`
	// FLOPs of one step by the 6*N*tokens rule plus attention
	// (12*layers*L*hidden per token), and the rate achieved.
	FlopsPerStep float64 `json:"flops_per_step"`
	TFLOPS       float64 `json:"tflops"`
	Loss         float64 `json:"loss"`
}

// BenchStep times the whole training step of a conversion (masking, forward,
// weighted loss, backward, global norm, AdamW) on random tokens with
// bidirectional attention, after warm-up steps.
func BenchStep(m *model.Model, B, L, warmup, steps int, seed uint64) (BenchResult, error) {
	be, c := m.BE, m.Cfg
	m.EnableGrads()
	n := m.Layout.Total
	mom, vel := be.Alloc(n), be.Alloc(n)
	be.Zero(mom)
	be.Zero(vel)
	defer be.Free(mom)
	defer be.Free(vel)
	acts := m.NewActivations(B, L, true)
	defer acts.Free(be)
	obj := diffusion.Objective{MaskID: int32(c.Vocab - 1), Shift: true, Weighting: diffusion.ELBO, Norm: diffusion.NormMasked, TMin: 1e-3}
	batch := diffusion.NewBatch(B, L)
	rng := rand.New(rand.NewPCG(seed, 1))
	vis := kernels.Visibility{Mode: kernels.Bidirectional}
	var loss float64
	step := func(i int) error {
		for j := range batch.X0 {
			batch.X0[j] = int32(rng.IntN(c.Vocab - 1))
		}
		obj.DrawTimes(rng, batch, true)
		obj.Mask(rng, batch)
		norm := obj.Score(batch)
		k := batch.NMasked
		copy(acts.IDs, batch.XT)
		copy(acts.Rows, batch.Rows[:k])
		copy(acts.Targets, batch.Targets[:k])
		copy(acts.Weights, batch.Weights[:k])
		acts.NRows, acts.AllRows = k, false
		acts.Upload(be)
		be.Zero(m.Grads)
		m.Forward(acts, vis)
		s, _ := m.Loss(acts, norm, true)
		loss = s / norm
		if err := m.Backward(acts, vis); err != nil {
			return err
		}
		gn := math.Sqrt(be.SumSquares(m.Grads))
		h := kernels.AdamW{LR: 1e-4, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1,
			BC1: float32(1 - math.Pow(0.9, float64(i+1))), BC2: float32(1 - math.Pow(0.95, float64(i+1))), GradScale: float32(min(1, 1/gn))}
		be.AdamWStep(m.Params, m.Grads, mom, vel, n, h)
		return be.Sync()
	}
	for i := 0; i < warmup; i++ {
		if err := step(i); err != nil {
			return BenchResult{}, err
		}
	}
	t0 := time.Now()
	for i := 0; i < steps; i++ {
		if err := step(warmup + i); err != nil {
			return BenchResult{}, err
		}
	}
	dt := time.Since(t0).Seconds() / float64(max(steps, 1))
	if math.IsNaN(loss) {
		return BenchResult{}, fmt.Errorf("bench: loss is NaN")
	}
	tokens := float64(B * L)
	flops := 6*float64(n)*tokens + 12*float64(c.Layers*L*c.QDim())*tokens
	return BenchResult{Backend: be.Name(), Batch: B, SeqLen: L, Params: int64(n), Steps: steps, MsPerStep: dt * 1e3,
		TokensPerSec: tokens / dt, FlopsPerStep: flops, TFLOPS: flops / dt / 1e12, Loss: loss}, nil
}
