//go:build linux

package cuda

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// perProduct is the Backend without kernels.BF16Cast: every product casts
// its float32 operands itself, as before the engine shared the casts.
type perProduct struct{ *Backend }

func (perProduct) CastBF16(kernels.Buf) (kernels.Buf, bool) { return kernels.Buf{}, false }

// stepBits are the losses, each step's gradients and the final weights of a
// run, compared bit for bit.
type stepBits struct {
	losses  []float64
	grads   [][]float32
	weights []float32
	casts   int64
}

func sameBits(t *testing.T, what string, ref, got stepBits) {
	t.Helper()
	for s := range ref.losses {
		if math.Float64bits(ref.losses[s]) != math.Float64bits(got.losses[s]) {
			t.Errorf("%s, step %d: loss %.9g with shared casts, %.9g casting per product", what, s+1, got.losses[s], ref.losses[s])
		}
		for i := range ref.grads[s] {
			if math.Float32bits(ref.grads[s][i]) != math.Float32bits(got.grads[s][i]) {
				t.Fatalf("%s, step %d: gradient %d is %g with shared casts, %g casting per product", what, s+1, i, got.grads[s][i], ref.grads[s][i])
			}
		}
	}
	for i := range ref.weights {
		if math.Float32bits(ref.weights[i]) != math.Float32bits(got.weights[i]) {
			t.Fatalf("%s: weight %d after the steps is %g with shared casts, %g casting per product", what, i, got.weights[i], ref.weights[i])
		}
	}
}

// TestEmulatorSharedCasts: the engine casts an activation read by several
// products to bf16 once (kernels.BF16Cast) and gives, bit for bit, the
// losses, gradients and weights of three training steps that cast it
// before every product (a Backend without BF16Cast), on llama, qwen2
// (biases), qwen3 (QK norm, tied head), qwen2_moe (router and shared
// expert gate, experts) and qwen3_moe, with the bf16 weight copies (and,
// on llama, without), with and without recompute, with fewer casts
// launched and no device allocation after the second step (casting per
// product, the head's gradient scratch follows the step's scored rows and
// may grow); with fp32 matmuls it launches no cast at all.
func TestEmulatorSharedCasts(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"} {
		t.Run(arch, func(t *testing.T) {
			dir := float32Copy(t, "../../testdata/tiny/"+arch)
			run := func(matmul string, shared, recompute, copies bool) stepBits {
				dev, d := newCastCounted(t, matmul)
				var be kernels.Backend = dev
				if !shared {
					be = perProduct{dev}
					dev.headGradPerProduct = true
				}
				m, err := model.Load(dir, be)
				if err != nil {
					t.Fatal(err)
				}
				m.SetBF16Copies(copies)
				const B, L = 2, 16
				st := convert.NewStepperWith(m, B, L, model.ActOptions{Recompute: recompute})
				vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.4, Seed: 7}
				rng := rand.New(rand.NewPCG(5, 6))
				var r stepBits
				before := d.casts.Load()
				var allocs int
				for step := 1; step <= 3; step++ {
					l, err := st.Step(convert.RandomStepBatch(rng, B, L, m.Cfg.Vocab, 6), vis, step)
					if err != nil {
						t.Fatal(err)
					}
					g := make([]float32, m.Grads.N)
					dev.Download(g, m.Grads)
					r.losses, r.grads = append(r.losses, l), append(r.grads, g)
					if a := dev.MemStats().Allocs; step == 2 {
						allocs = a
					} else if step == 3 && shared && a != allocs {
						t.Errorf("%s, recompute %v, copies %v: step 3 made %d device allocations (the shared casts' buffers are the pool's)", matmul, recompute, copies, a-allocs)
					}
				}
				r.casts = d.casts.Load() - before
				r.weights = make([]float32, m.Params.N)
				dev.Download(r.weights, m.Params)
				if err := dev.Err(); err != nil {
					t.Fatal(err)
				}
				return r
			}
			for _, recompute := range []bool{false, true} {
				ref, got := run("bf16", false, recompute, true), run("bf16", true, recompute, true)
				what := map[bool]string{false: "bf16", true: "bf16 recompute"}[recompute]
				sameBits(t, what, ref, got)
				if got.casts >= ref.casts {
					t.Errorf("%s: %d casts with shared casts, %d per product", what, got.casts, ref.casts)
				}
				t.Logf("%s: %d bf16 casts in 3 steps, %d casting per product", what, got.casts, ref.casts)
			}
			if arch == "llama" {
				ref, got := run("bf16", false, false, false), run("bf16", true, false, false)
				sameBits(t, "bf16, no weight copies", ref, got)
			}
			if arch == "qwen3" {
				ref, got := run("fp32", false, false, true), run("fp32", true, false, true)
				sameBits(t, "fp32", ref, got)
				if got.casts != 0 || ref.casts != 0 {
					t.Errorf("fp32 matmuls launched %d and %d casts", got.casts, ref.casts)
				}
			}
		})
	}
}

// TestEmulatorSharedCastsLoRA: LoRA on a bf16-held frozen base, adapters on
// q_proj and v_proj (q, k and v then cast their input per product: an
// adapter reads it as float32) and not on gate and up (which share one
// cast), with recompute: the adapters' losses, gradients and weights are
// those of casting per product, bit for bit.
func TestEmulatorSharedCastsLoRA(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	dir := float32Copy(t, "../../testdata/tiny/qwen2")
	run := func(shared bool) stepBits {
		dev, d := newCastCounted(t, "bf16")
		var be kernels.Backend = dev
		if !shared {
			be = perProduct{dev}
		}
		m, err := model.LoadFrozen(dir, be, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !m.HalfHeld() {
			t.Fatal("the frozen base holds nothing in bf16")
		}
		ad, err := model.NewLoRA(m, model.LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"q_proj", "v_proj"}}, 5)
		if err != nil {
			t.Fatal(err)
		}
		m.SetAdapter(ad)
		var r stepBits
		before := d.casts.Load()
		r.losses, r.grads = loraSteps(t, dev, m, ad, -1)
		r.casts = d.casts.Load() - before
		r.weights = make([]float32, ad.Params.N)
		dev.Download(r.weights, ad.Params)
		if err := dev.Err(); err != nil {
			t.Fatal(err)
		}
		return r
	}
	ref, got := run(false), run(true)
	sameBits(t, "lora", ref, got)
	if got.casts >= ref.casts {
		t.Errorf("%d casts with shared casts, %d per product", got.casts, ref.casts)
	}
	t.Logf("%d bf16 casts in 3 steps, %d casting per product", got.casts, ref.casts)
}

// TestEmulatorSharedCastsPlan: what the shared casts keep in the pool is
// what the memory plan's workspace counts. Without the bf16 weight copies
// a group's bf16 input is alive with an output gradient's and a weight's
// during the input-gradient products (on llama and qwen2_moe's shapes two
// of one size class: a block more than casting per product); with the
// copies no more than before. The pool also caches scratch the plan does
// not count as workspace (the norms' and attention's), the same whether
// the copies are on or off: so the pool's cached bytes less the plan's
// workspace must be one number for both. (A sparse layer's plan is the
// worst case, every token in every expert: there it must cover the pool.)
func TestEmulatorSharedCastsPlan(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen3", "qwen2_moe"} {
		t.Run(arch, func(t *testing.T) {
			const B, L = 2, 16
			cached := func(copies, shared bool) (pool, plan int64) {
				dev := newEmuBackend(t, "bf16")
				var be kernels.Backend = dev
				if !shared {
					be = perProduct{dev}
					dev.headGradPerProduct = true
				}
				m, err := model.Load("../../testdata/tiny/"+arch, be)
				if err != nil {
					t.Fatal(err)
				}
				m.SetBF16Copies(copies)
				st := convert.NewStepper(m, B, L)
				rng := rand.New(rand.NewPCG(5, 6))
				for step := 1; step <= 2; step++ {
					if _, err := st.Step(convert.RandomStepBatch(rng, B, L, m.Cfg.Vocab, 6), kernels.Visibility{Mode: kernels.Bidirectional}, step); err != nil {
						t.Fatal(err)
					}
				}
				p, err := model.ComputePlan(m.Cfg, model.PlanOptions{SeqLen: L, BatchSize: B, Device: "cuda", Matmul: "bf16", NoCopies: !copies})
				if err != nil {
					t.Fatal(err)
				}
				if err := dev.Err(); err != nil {
					t.Fatal(err)
				}
				return int64(dev.PoolCached()), p.WorkspaceBytes
			}
			onPool, onPlan := cached(true, true)
			offPool, offPlan := cached(false, true)
			perPool, _ := cached(false, false)
			if moe := arch == "qwen2_moe"; !moe && onPool-onPlan != offPool-offPlan || moe && onPool-onPlan < offPool-offPlan {
				t.Errorf("pool cached less plan workspace: %d - %d with the copies, %d - %d without", onPool, onPlan, offPool, offPlan)
			}
			t.Logf("without the copies the shared casts cache %d bytes more than casting per product; uncounted scratch %d", offPool-perPool, onPool-onPlan)
		})
	}
}
