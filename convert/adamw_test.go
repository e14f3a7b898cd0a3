package convert

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// fusedCPU is kernels/cpu with kernels.AdamWBF16 (a Half buffer here
// holds the rounded values as float32), recording each call's range.
type fusedCPU struct {
	*cpu.Backend
	calls [][2]int // n, from
}

func (b *fusedCPU) AdamWStepBF16(p, g, m, v kernels.Buf, n int, h kernels.AdamW, p16 kernels.Buf, from int) {
	b.calls = append(b.calls, [2]int{n, from})
	b.AdamWStep(p, g, m, v, n, h)
	for i := from; i < n; i++ {
		p16.Host[i-from] = math.Float32frombits(uint32(safetensors.BF16Bits(p.Host[i])) << 16)
	}
}

// TestAdamWBF16Runs: with kernels.AdamWBF16, Step updates every parameter
// once with its group's decay (the same values as without), writes the
// copy of each run inside one group in the launch that ends it, and calls
// written (ParamsWritten) only when a run crosses groups.
func TestAdamWBF16Runs(t *testing.T) {
	cfg, err := model.LoadConfig("../testdata/tiny/llama/config.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, across := range []bool{false, true} {
		ref, fb := cpu.New(1), &fusedCPU{Backend: cpu.New(1)}
		mr, mf := model.New(cfg, ref), model.New(cfg, fb)
		mr.InitRandom(3)
		mf.InitRandom(3)
		mr.EnableGrads()
		mf.EnableGrads()
		l := mf.Layout
		// One run per matrix (decayed); across: a norm and the matrix after it.
		var runs []model.BF16Run
		for i, s := range l.Specs {
			if !model.Decays(s.Name) || len(s.Shape) != 2 {
				continue
			}
			src, n := l.Offsets[i], s.Elements()
			if across && i > 0 && !model.Decays(l.Specs[i-1].Name) && len(runs) == 1 {
				n += src - l.Offsets[i-1]
				src = l.Offsets[i-1]
			}
			runs = append(runs, model.BF16Run{Src: src, N: n, Copy: kernels.Buf{Host: make([]float32, n), N: n, Half: true}})
		}
		written := 0
		set := modelSet(mf)
		set.be, set.copies, set.written = fb, func() []model.BF16Run { return runs }, func() { written++ }
		af, ar := newAdamW(set, 0.9, 0.95, 1e-8, 0.1, false), NewAdamW(mr, 0.9, 0.95, 1e-8, 0.1, false)
		rng := rand.New(rand.NewPCG(1, 2))
		for step := 1; step <= 2; step++ {
			for i := range mr.Grads.Host {
				g := float32(rng.NormFloat64())
				mr.Grads.Host[i], mf.Grads.Host[i] = g, g
			}
			ar.Step(1e-2/float64(step), step, 0.5)
			af.Step(1e-2/float64(step), step, 0.5)
		}
		for i, w := range mr.Params.Host {
			if math.Float32bits(w) != math.Float32bits(mf.Params.Host[i]) {
				t.Fatalf("across %v: parameter %d is %g with AdamWBF16, %g without", across, i, mf.Params.Host[i], w)
			}
		}
		fusedRuns := len(runs)
		if across {
			fusedRuns--
		}
		if len(fb.calls) != 2*fusedRuns || written != map[bool]int{false: 0, true: 2}[across] {
			t.Errorf("across %v: %d fused launches and %d ParamsWritten in 2 steps of %d runs", across, len(fb.calls), written, len(runs))
		}
		for j, r := range runs {
			if across && j == 1 {
				continue // ParamsWritten's, not made here
			}
			for i, c := range r.Copy.Host {
				if want := math.Float32frombits(uint32(safetensors.BF16Bits(mf.Params.Host[r.Src+i])) << 16); c != want {
					t.Fatalf("across %v: run %d copy %d: %g, want %g", across, j, i, c, want)
				}
			}
		}
	}
}
