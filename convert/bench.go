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
	Backend string `json:"backend"`
	Batch   int    `json:"batch"`
	SeqLen  int    `json:"seq_len"`
	Params  int64  `json:"params"`
	// ActiveParams are the parameters one token uses (MoE: the routed
	// experts only); the FLOPs count these.
	ActiveParams int64   `json:"active_params"`
	Steps        int     `json:"steps"`
	MsPerStep    float64 `json:"ms_per_step"`
	TokensPerSec float64 `json:"tokens_per_second"`
	// FLOPs of one step by the 6*N*tokens rule (N active) plus attention
	// (12*layers*L*q_dim per token: q_dim is heads*head_dim), and the rate achieved.
	FlopsPerStep float64 `json:"flops_per_step"`
	TFLOPS       float64 `json:"tflops"`
	Loss         float64 `json:"loss"`
	Recompute    bool    `json:"recompute"`
}

// BenchStep times the whole training step of a conversion (masking, forward,
// weighted loss, backward, global norm, AdamW) on random tokens with
// bidirectional attention, after warm-up steps.
func BenchStep(m *model.Model, B, L, warmup, steps int, seed uint64) (BenchResult, error) {
	return BenchStepVis(m, B, L, warmup, steps, seed, kernels.Visibility{Mode: kernels.Bidirectional}, false)
}

// BenchStepVis is BenchStep under vis; an annealed rule gets a new seed
// every step, as in a conversion. recompute recomputes each layer before
// its backward.
func BenchStepVis(m *model.Model, B, L, warmup, steps int, seed uint64, vis kernels.Visibility, recompute bool) (BenchResult, error) {
	be, c := m.BE, m.Cfg
	st := NewStepperWith(m, B, L, model.ActOptions{Training: true, Recompute: recompute})
	st.LR = 1e-4
	defer st.Free()
	obj := diffusion.Objective{MaskID: int32(c.Vocab - 1), Shift: true, Weighting: diffusion.ELBO, Norm: diffusion.NormMasked, TMin: 1e-3}
	batch := diffusion.NewBatch(B, L)
	rng := rand.New(rand.NewPCG(seed, 1))
	docs := make([]int32, B*L)
	var loss float64
	step := func(i int) error {
		for j := range batch.X0 {
			batch.X0[j] = int32(rng.IntN(c.Vocab - 1))
		}
		obj.DrawTimes(rng, batch, true)
		obj.Mask(rng, batch)
		obj.Score(batch)
		k := batch.NMasked
		if vis.Mode == kernels.Annealed {
			vis.Seed = rng.Uint64()
		}
		var err error
		loss, err = st.Step(StepBatch{IDs: batch.XT, Docs: docs, Rows: batch.Rows[:k], Targets: batch.Targets[:k], Weights: batch.Weights[:k]}, vis, i+1)
		return err
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
	n, active := m.Layout.Values, c.ActiveParamCount()
	tokens := float64(B * L)
	flops := 6*float64(active)*tokens + 12*float64(c.Layers*L*c.QDim())*tokens
	return BenchResult{Backend: be.Name(), Batch: B, SeqLen: L, Params: int64(n), ActiveParams: active, Steps: steps, MsPerStep: dt * 1e3,
		TokensPerSec: tokens / dt, FlopsPerStep: flops, TFLOPS: flops / dt / 1e12, Loss: loss, Recompute: recompute}, nil
}
