//go:build linux

package cuda

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/internal/oddshapes"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// oddModel writes the tiny arch with odd shapes (internal/oddshapes) and
// random weights to a folder.
func oddModel(t *testing.T, arch string) string {
	t.Helper()
	b, err := oddshapes.Config(filepath.Join("../../testdata/tiny", arch))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	m := model.New(cfg, cpu.New(1))
	m.InitRandom(11)
	dir := t.TempDir()
	if _, err := safetensors.Write(dir, m.ExportSpecs(), m.ParamFetch(), safetensors.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestEmulatorAlignedViews: on the emulated device with bf16 matmuls and
// odd shapes, every tensor cuBLAS reads sits at an aligned address: each
// fp32 parameter and gradient at a multiple of 32 bytes, each bf16 weight
// (a frozen base's, full fine-tuning's copies) at a multiple of 16, each
// adapter tensor at 32; the plan's bytes are what the pool holds; the
// padding stays zero through AdamW; and with the padded copies the losses
// are bit for bit those of casting per product.
func TestEmulatorAlignedViews(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen2_moe"} {
		t.Run(arch, func(t *testing.T) {
			dir := oddModel(t, arch)
			aligned := func(what string, b kernels.Buf) {
				t.Helper()
				if a := map[bool]uintptr{false: 32, true: 16}[b.Half]; b.N > 0 && b.Dev%a != 0 {
					t.Errorf("%s at %#x: not a multiple of %d bytes", what, b.Dev, a)
				}
			}
			train := func(copies bool) []float64 {
				m, be, _ := loadCopies(t, dir, copies)
				if copies != (m.BF16Copies() > 0) {
					t.Fatalf("bf16 copies: %d values, want them %v", m.BF16Copies(), copies)
				}
				for _, s := range m.Layout.Specs {
					v, _ := m.Tensor(s.Name)
					aligned(s.Name, v)
					g, _ := m.Layout.View(m.Grads, s.Name)
					aligned(s.Name+" gradient", g)
				}
				lins := []*model.Linear{&m.Head}
				for _, ly := range m.Layers {
					lins = append(lins, ly.Linears()...)
				}
				for _, l := range lins {
					aligned(l.Name+" bf16 copy", l.W16)
				}
				const B, L = 2, 8
				st := convert.NewStepperWith(m, B, L, model.ActOptions{})
				rng := rand.New(rand.NewPCG(1, 2))
				var losses []float64
				for step := 1; step <= 2; step++ {
					l, err := st.Step(convert.RandomStepBatch(rng, B, L, m.Cfg.Vocab, 5), kernels.Visibility{Mode: kernels.Bidirectional}, step)
					if err == nil {
						err = be.Err()
					}
					if err != nil {
						t.Fatal(err)
					}
					losses = append(losses, l)
				}
				// AdamW's groups span the padding: it stays zero.
				for _, buf := range []kernels.Buf{m.Params, m.Grads} {
					v := make([]float32, buf.N)
					be.Download(v, buf)
					for i, s := range m.Layout.Specs {
						clear(v[m.Layout.Offsets[i] : m.Layout.Offsets[i]+s.Elements()])
					}
					for i, x := range v {
						if x != 0 {
							t.Fatalf("padding value %d is %g after 2 steps", i, x)
						}
					}
				}
				return losses
			}
			a, b := train(false), train(true)
			for i := range a {
				if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
					t.Errorf("step %d: loss %.9g with the bf16 copies, %.9g casting per product", i+1, b[i], a[i])
				}
			}

			// A frozen base (LoRA): bf16 matrices, fp32 rest, the adapter.
			be := newEmuBackend(t, "bf16")
			m, err := model.LoadFrozen(dir, be, 1)
			if err != nil {
				t.Fatal(err)
			}
			if !m.HalfHeld() {
				t.Fatal("the frozen base holds nothing in bf16")
			}
			p, err := model.ComputePlan(m.Cfg, model.PlanOptions{SeqLen: 8, BatchSize: 1, Device: "cuda", Matmul: "bf16", FrozenBase: true})
			if err != nil || p.ParamBytes != be.MemStats().InUse {
				t.Errorf("plan: %d parameter bytes (%v), the pool holds %d", p.ParamBytes, err, be.MemStats().InUse)
			}
			half := 0
			for _, s := range m.Layout.Specs {
				v, _ := m.Tensor(s.Name)
				aligned(s.Name, v)
				if v.Half {
					half++
				}
			}
			lc := model.LoRAConfig{Rank: 3, Alpha: 6, Targets: []string{"q_proj", "k_proj", "down_proj"}, TrainRows: []int{m.Cfg.Vocab - 1}}
			before := be.MemStats().InUse
			ad, err := model.NewLoRA(m, lc, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range ad.Layout.Specs {
				v, _ := ad.Layout.View(ad.Params, s.Name)
				aligned("adapter "+s.Name, v)
			}
			if n := lc.BufferLen(m.Cfg, 1); be.MemStats().InUse-before != 2*int64(sizeClass(uintptr(4*n))) {
				t.Errorf("adapter: %d device bytes, 2 buffers of %d values planned", be.MemStats().InUse-before, n)
			}
			if half == 0 {
				t.Error("no bf16 tensor was checked")
			}
		})
	}
}
