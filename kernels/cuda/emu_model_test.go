//go:build linux

package cuda

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/kernels/kernelcheck"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// TestEmulatorTrainingSteps runs whole training steps of the tiny llama,
// qwen2 (biases), qwen3 (QK norm, tied embeddings) and MoE (qwen2_moe with
// its shared expert, qwen3_moe, mixtral) checkpoints on the
// emulated device and on kernels/cpu with the same batches: the first
// step's gradients, the losses and the weights after three steps must agree
// (loosely after the first update: Adam's first step turns the sign of
// gradients near zero, rounding noise included, into whole learning-rate
// steps), and after the first step the device pool must not allocate again.
func TestEmulatorTrainingSteps(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral"} {
		t.Run(arch, func(t *testing.T) {
			dev := newEmuBackend(t, "fp32")
			dir := "../../testdata/tiny/" + arch
			ref, err := model.Load(dir, cpu.New(2))
			if err != nil {
				t.Fatal(err)
			}
			dut, err := model.Load(dir, dev)
			if err != nil {
				t.Fatal(err)
			}
			const B, L = 2, 24
			vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.4, Seed: 99, DocMask: true}
			rr, rd := convert.NewStepper(ref, B, L), convert.NewStepper(dut, B, L)
			rng := rand.New(rand.NewPCG(3, 4))
			var allocs int
			for step := 1; step <= 3; step++ {
				batch := convert.RandomStepBatch(rng, B, L, ref.Cfg.Vocab, 10)
				lr, err := rr.Step(batch, vis, step)
				if err != nil {
					t.Fatal(err)
				}
				ld, err := rd.Step(batch, vis, step)
				if err == nil {
					err = dev.Err()
				}
				if err != nil {
					t.Fatal(err)
				}
				if e := math.Abs(ld-lr) / math.Abs(lr); !(e < 1e-4) {
					t.Errorf("step %d: loss %.7f on the device, %.7f on the CPU (rel %.2g)", step, ld, lr, e)
				}
				if step == 1 {
					compareBufs(t, "gradients of step 1", ref.BE, dev, ref.Grads, dut.Grads, 1e-5)
				}
				if step == 2 {
					allocs = dev.MemStats().Allocs
				}
			}
			if a := dev.MemStats().Allocs; a != allocs {
				t.Errorf("step 3 allocated device memory: %d allocations after step 2, %d after step 3", allocs, a)
			}
			compareBufs(t, "weights after 3 steps", ref.BE, dev, ref.Params, dut.Params, 1e-4)
		})
	}
}

func compareBufs(t *testing.T, what string, rb, db kernels.Backend, r, d kernels.Buf, tol float64) {
	t.Helper()
	rv, dv := make([]float32, r.N), make([]float32, d.N)
	rb.Download(rv, r)
	db.Download(dv, d)
	if e := kernelcheck.RelErr(rv, dv); !(e < tol) {
		t.Errorf("%s: rel err %.3g > %g", what, e, tol)
	} else {
		t.Logf("%s: rel err %.3g", what, e)
	}
}

// TestEmulatorBF16Copies: full fine-tuning with bf16 matmuls reads bf16
// copies of the weights made once per step (after each AdamW update) and
// gives, bit for bit, the losses and weights of casting the weights before
// every product (--bf16-copies off, Model.SetBF16Copies(false)), over
// several steps, with and without recompute, tied and untied heads; the
// plan of each choice is what the pool holds.
func TestEmulatorBF16Copies(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen3"} {
		t.Run(arch, func(t *testing.T) {
			dir := float32Copy(t, "../../testdata/tiny/"+arch)
			var inUse [2]int64
			run := func(copies bool) ([]float64, []float32) {
				m, be, p := loadCopies(t, dir, copies)
				inUse[map[bool]int{false: 0, true: 1}[copies]] = be.MemStats().InUse
				if copies && p.CopyBytes == 0 {
					t.Error("the plan counts no bf16 copies")
				}
				const B, L = 2, 16
				st := convert.NewStepperWith(m, B, L, model.ActOptions{Recompute: arch != "qwen2"})
				if got := m.BF16Copies() > 0; got != copies {
					t.Fatalf("bf16 copies: %v, want %v", got, copies)
				}
				vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.4, Seed: 7}
				rng := rand.New(rand.NewPCG(5, 6))
				var losses []float64
				for step := 1; step <= 3; step++ {
					l, err := st.Step(convert.RandomStepBatch(rng, B, L, m.Cfg.Vocab, 6), vis, step)
					if err != nil {
						t.Fatal(err)
					}
					losses = append(losses, l)
				}
				w := make([]float32, m.Params.N)
				be.Download(w, m.Params)
				if err := be.Err(); err != nil {
					t.Fatal(err)
				}
				return losses, w
			}
			lr, wr := run(false)
			lc, wc := run(true)
			if inUse[1] <= inUse[0] {
				t.Errorf("device bytes: %d with the copies, %d without", inUse[1], inUse[0])
			}
			for i := range lr {
				if math.Float64bits(lr[i]) != math.Float64bits(lc[i]) {
					t.Errorf("step %d: loss %.9g with bf16 copies, %.9g casting per product", i+1, lc[i], lr[i])
				}
			}
			for i := range wr {
				if math.Float32bits(wr[i]) != math.Float32bits(wc[i]) {
					t.Fatalf("weight %d after 3 steps: %g with bf16 copies, %g casting per product", i, wc[i], wr[i])
				}
			}
		})
	}
}

// loadCopies loads dir on a bf16 emulator with the bf16 copies on or off
// and gradients enabled, and checks that the plan's parameters (with or
// without the copies) and gradients are what the pool handed out.
func loadCopies(t *testing.T, dir string, copies bool) (*model.Model, *Backend, *model.Plan) {
	t.Helper()
	be := newEmuBackend(t, "bf16")
	m, err := model.Load(dir, be)
	if err != nil {
		t.Fatal(err)
	}
	m.SetBF16Copies(copies)
	m.EnableGrads()
	p, err := model.ComputePlan(m.Cfg, model.PlanOptions{SeqLen: 8, BatchSize: 1, Device: "cuda", Matmul: "bf16", NoCopies: !copies})
	if err != nil || p.ParamBytes+p.GradBytes != be.MemStats().InUse {
		t.Errorf("plan: %d parameter and %d gradient bytes (%v), the pool holds %d", p.ParamBytes, p.GradBytes, err, be.MemStats().InUse)
	}
	return m, be, p
}

// castCounter counts the bf16 casts (and fused AdamW updates) launched
// through it.
type castCounter struct {
	driver
	casts, fused atomic.Int64
}

func (d *castCounter) launch(k kernel, grid, block dim3, p *params) error {
	switch k {
	case kCastBF16:
		d.casts.Add(1)
	case kAdamWBF16:
		d.fused.Add(1)
	}
	return d.driver.launch(k, grid, block, p)
}

// newCastCounted is newEmuBackend counting the bf16 casts it launches.
func newCastCounted(t *testing.T, matmul string) (*Backend, *castCounter) {
	d := &castCounter{}
	be := newEmuWrapped(t, matmul, func(drv driver) driver {
		d.driver = drv
		return d
	})
	return be, d
}

// TestEmulatorAdamWBF16: AdamW writing the bf16 copies (adamw_bf16, one
// launch per run of copied tensors, no cast pass after it) equals adamw
// followed by cast_f32_bf16 bit for bit: the losses of training steps
// (one decay group, clipping), then updates with decay groups (matrices
// only), a gradient scale and a changing learning rate: weights, both
// moments and the copies, which are also each weight rounded.
func TestEmulatorAdamWBF16(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen3", "qwen3_moe"} {
		t.Run(arch, func(t *testing.T) {
			dir := float32Copy(t, "../../testdata/tiny/"+arch)
			type result struct {
				losses          []float64
				w, m, v, copies []float32
				casts, fused    int64
				runs            int
			}
			run := func(twoPass bool) result {
				be, d := newCastCounted(t, "bf16")
				be.adamwTwoPass = twoPass
				m, err := model.Load(dir, be)
				if err != nil {
					t.Fatal(err)
				}
				var r result
				const B, L = 1, 8
				st := convert.NewStepperWith(m, B, L, model.ActOptions{})
				rng := rand.New(rand.NewPCG(7, 8))
				for step := 1; step <= 2; step++ {
					l, err := st.Step(convert.RandomStepBatch(rng, B, L, m.Cfg.Vocab, 3), kernels.Visibility{Mode: kernels.Bidirectional}, step)
					if err != nil {
						t.Fatal(err)
					}
					r.losses = append(r.losses, l)
				}
				runs := m.BF16Runs()
				r.runs = len(runs)
				a := convert.NewAdamW(m, 0.9, 0.95, 1e-8, 0.1, false)
				g := make([]float32, m.Grads.N)
				if err := be.Sync(); err != nil {
					t.Fatal(err)
				}
				casts, fused := d.casts.Load(), d.fused.Load()
				for step := 1; step <= 3; step++ {
					for i := range g {
						g[i] = float32(rng.NormFloat64())
					}
					be.Upload(m.Grads, g)
					a.Step(1e-3/float64(step), step, 0.6)
				}
				if err := be.Sync(); err != nil {
					t.Fatal(err)
				}
				r.casts, r.fused = d.casts.Load()-casts, d.fused.Load()-fused
				r.w, r.m, r.v = make([]float32, m.Params.N), make([]float32, a.M.N), make([]float32, a.V.N)
				be.Download(r.w, m.Params)
				be.Download(r.m, a.M)
				be.Download(r.v, a.V)
				for _, run := range runs {
					c := make([]float32, run.N)
					be.Download(c, run.Copy)
					for i, x := range c {
						if want := safetensors.BF16Bits(r.w[run.Src+i]); uint32(want)<<16 != math.Float32bits(x) {
							t.Fatalf("copy of parameter %d: %g, the weight %g rounds to %g", run.Src+i, x, r.w[run.Src+i], math.Float32frombits(uint32(want)<<16))
						}
					}
					r.copies = append(r.copies, c...)
				}
				if err := be.Err(); err != nil {
					t.Fatal(err)
				}
				return r
			}
			two, one := run(true), run(false)
			if one.runs == 0 {
				t.Fatal("no bf16 copies")
			}
			if two.casts != 3*int64(two.runs) || two.fused != 0 {
				t.Errorf("two passes: %d casts and %d fused updates in 3 steps of %d runs", two.casts, two.fused, two.runs)
			}
			if one.casts != 0 || one.fused != 3*int64(one.runs) {
				t.Errorf("fused: %d casts and %d fused updates in 3 steps of %d runs", one.casts, one.fused, one.runs)
			}
			for i := range two.losses {
				if math.Float64bits(two.losses[i]) != math.Float64bits(one.losses[i]) {
					t.Errorf("step %d: loss %.9g fused, %.9g in two passes", i+1, one.losses[i], two.losses[i])
				}
			}
			for name, p := range map[string][2][]float32{"weight": {one.w, two.w}, "m": {one.m, two.m}, "v": {one.v, two.v}, "copy": {one.copies, two.copies}} {
				if len(p[0]) != len(p[1]) {
					t.Fatalf("%s: %d values fused, %d in two passes", name, len(p[0]), len(p[1]))
				}
				for i := range p[0] {
					if math.Float32bits(p[0][i]) != math.Float32bits(p[1][i]) {
						t.Fatalf("%s %d: %g fused, %g in two passes", name, i, p[0][i], p[1][i])
					}
				}
			}
		})
	}
}

// TestEmulatorCopyRuns: ParamsWritten remakes the bf16 copies with one cast
// per run of copied tensors that are neighbours in the layout (fewer casts
// than tensors), and every linear's copy is then its weight rounded to bf16.
func TestEmulatorCopyRuns(t *testing.T) {
	for _, arch := range []string{"llama", "qwen2", "qwen3", "qwen2_moe"} {
		t.Run(arch, func(t *testing.T) {
			be, d := newCastCounted(t, "bf16")
			m, err := model.Load(float32Copy(t, "../../testdata/tiny/"+arch), be)
			if err != nil {
				t.Fatal(err)
			}
			m.EnableGrads()
			lins := []*model.Linear{&m.Head}
			for _, ly := range m.Layers {
				lins = append(lins, ly.Linears()...)
			}
			// The copied tensors, counted from the layout: runs of neighbours.
			copied := map[uintptr]bool{}
			for _, l := range lins {
				if l.W16.N == 0 {
					t.Fatalf("%s has no bf16 copy", l.Name)
				}
				copied[l.W.Dev] = true
			}
			var tensors, runs int
			prev := false
			for _, s := range m.Layout.Specs {
				v, _ := m.Tensor(s.Name)
				c := copied[v.Dev]
				if c {
					tensors++
					if !prev {
						runs++
					}
				}
				prev = c
			}
			host := make([]float32, m.Params.N)
			rng := rand.New(rand.NewPCG(3, 4))
			for i := range host {
				host[i] = float32(rng.NormFloat64())
			}
			be.Upload(m.Params, host)
			before := d.casts.Load()
			m.ParamsWritten()
			if err := be.Err(); err != nil {
				t.Fatal(err)
			}
			if got := d.casts.Load() - before; got != int64(runs) || runs >= tensors {
				t.Errorf("ParamsWritten launched %d casts for %d copied tensors in %d runs", got, tensors, runs)
			}
			for _, l := range lins {
				w, w16 := make([]float32, l.W.N), make([]float32, l.W16.N)
				be.Download(w, l.W)
				be.Download(w16, l.W16)
				for i := range w {
					if want := math.Float32frombits(uint32(safetensors.BF16Bits(w[i])) << 16); math.Float32bits(w16[i]) != math.Float32bits(want) {
						t.Fatalf("%s copy [%d] = %g, bf16 of %g is %g", l.Name, i, w16[i], w[i], want)
					}
				}
			}
			t.Logf("%d casts for %d copied tensors", runs, tensors)
		})
	}
}

// TestEmulatorModelFree: Model.Free gives every buffer of a model (its
// parameters, gradients, bf16 copies and RoPE tables) back to the pool,
// whose cached blocks PoolCached then counts, and a model loaded after it
// reuses them without a new device allocation.
func TestEmulatorModelFree(t *testing.T) {
	path := buildEmu(t)
	be, err := newBackend(false, func() (driver, error) { return openEmu(path) })
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	dir := float32Copy(t, "../../testdata/tiny/llama")
	before := be.MemStats()
	m, err := model.Load(dir, be)
	if err != nil {
		t.Fatal(err)
	}
	m.EnableGrads()
	m.NewActivations(1, 3, false).Free(be) // and the RoPE tables
	if err := be.Err(); err != nil {
		t.Fatal(err)
	}
	loaded := be.MemStats()
	if loaded.InUse <= before.InUse || be.PoolCached() != uint64(loaded.Reserved-loaded.InUse) {
		t.Fatalf("loaded: %+v (before %+v), PoolCached %d", loaded, before, be.PoolCached())
	}
	m.Free()
	freed := be.MemStats()
	if freed.InUse != before.InUse || be.PoolCached() != uint64(freed.Reserved-before.InUse) || be.PoolCached() == 0 {
		t.Fatalf("after Free: %+v (before the load %+v), PoolCached %d", freed, before, be.PoolCached())
	}
	if _, err := model.Load(dir, be); err != nil {
		t.Fatal(err)
	}
	if again := be.MemStats(); again.Allocs != freed.Allocs {
		t.Errorf("a second load made %d device allocations after Free, want 0 (the pool's blocks)", again.Allocs-freed.Allocs)
	}
}
