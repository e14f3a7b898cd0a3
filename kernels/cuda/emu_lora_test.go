//go:build linux

package cuda

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// TestEmulatorLoRAGradients: one LoRA step (adapters on every linear, the
// trained mask row, dropout) on the emulated device and on kernels/cpu
// gives the same loss and adapter gradients; the untied qwen2 runs the
// device's fused head-and-loss kernel, the tied llama does not (its row
// needs the logits).
func TestEmulatorLoRAGradients(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2"} {
		t.Run(arch, func(t *testing.T) {
			dir := "../../testdata/tiny/" + arch
			run := func(be kernels.Backend) (float64, []float32) {
				m, err := model.Load(dir, be)
				if err != nil {
					t.Fatal(err)
				}
				lc := model.LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.1, Targets: model.LoRATargets, TrainRows: []int{7}, TrainNorms: arch == "qwen2"}
				ad, err := model.NewLoRA(m, lc, 5)
				if err != nil {
					t.Fatal(err)
				}
				// B non-zero so that every path carries gradient.
				host := make([]float32, ad.Params.N)
				be.Download(host, ad.Params)
				for i, s := range ad.Layout.Specs {
					if len(s.Name) > 14 && s.Name[len(s.Name)-14:] == "lora_B.weight" {
						for j := 0; j < s.Elements(); j++ {
							host[ad.Layout.Offsets[i]+j] = float32((j%7)-3) * 0.01
						}
					}
				}
				be.Upload(ad.Params, host)
				m.SetAdapter(ad)
				ad.SetDropout(true, 3)
				const B, L = 2, 16
				a := m.NewActivations(B, L, true)
				rows := a.ScoreRows(B * L / 2)
				for i := 0; i < B*L; i++ {
					a.IDs[i] = int32((i*37 + 11) % m.Cfg.Vocab)
					if i%4 == 1 {
						a.IDs[i] = 7
					}
				}
				for k := range rows {
					rows[k], a.Targets[k], a.Weights[k] = int32(2*k), int32((k*53+5)%m.Cfg.Vocab), 1
				}
				a.Upload(be)
				vis := kernels.Visibility{Mode: kernels.Bidirectional}
				loss, g := lossAndGrads(t, m, a, vis, len(rows), ad.Grads)
				if err := be.Err(); err != nil {
					t.Fatal(err)
				}
				return loss, g
			}
			lr, gr := run(cpu.New(2))
			ld, gd := run(newEmuBackend(t, "fp32"))
			if e := (ld - lr) / lr; e > 1e-4 || e < -1e-4 {
				t.Errorf("loss %.7f on the device, %.7f on the CPU", ld, lr)
			}
			var num, den float64
			for i := range gr {
				d := float64(gd[i] - gr[i])
				num += d * d
				den += float64(gr[i]) * float64(gr[i])
			}
			if den == 0 || num/den > 1e-8 {
				t.Errorf("adapter gradients differ: relative squared error %.3g (norm^2 %.3g)", num/den, den)
			}
		})
	}
}

// TestEmulatorLoRABF16Base: with bf16 matmuls, a LoRA run on a base held
// once in bf16 (model.LoadFrozen) gives bit for bit the losses and adapter
// gradients of one on the float32 base cast per product (model.Load and
// GrowVocab), over several AdamW steps, with a new mask row, recompute and
// (qwen2, untied) the fused head reading the bf16 lm_head; it holds less
// device memory, and the merged export still reads the source's weights.
func TestEmulatorLoRABF16Base(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	for _, arch := range []string{"llama", "qwen2", "qwen2_moe"} {
		t.Run(arch, func(t *testing.T) {
			dir := float32Copy(t, "../../testdata/tiny/"+arch)
			type result struct {
				losses  []float64
				grads   [][]float32
				merged  map[string][]float32
				inUse   int64
				rounded bool // some bf16 weight differs from its float32 value
			}
			run := func(frozen bool) result {
				be := newEmuBackend(t, "bf16")
				var m *model.Model
				var err error
				if frozen {
					m, err = model.LoadFrozen(dir, be, 1)
				} else if m, err = model.Load(dir, be); err == nil {
					old := m
					m, err = m.GrowVocab(1)
					be.Free(old.Params)
				}
				if err != nil {
					t.Fatal(err)
				}
				if frozen != m.HalfHeld() {
					t.Fatalf("frozen %v, bf16 weights held: %v", frozen, m.HalfHeld())
				}
				// The plan's parameter row is what the pool handed out.
				// (The reference holds its base fp32 as the plan does with fp32 matmuls.)
				mm := map[bool]string{true: "bf16", false: "fp32"}[frozen]
				p, err := model.ComputePlan(m.Cfg, model.PlanOptions{SeqLen: 8, BatchSize: 1, Device: "cuda", FrozenBase: true, Matmul: mm})
				if err != nil || p.ParamBytes != be.MemStats().InUse {
					t.Errorf("plan: %d parameter bytes (%v), the pool holds %d", p.ParamBytes, err, be.MemStats().InUse)
				}
				row := m.Cfg.Vocab - 1
				targets := []string{"q_proj", "v_proj", "down_proj"} // down_proj: every expert's on qwen2_moe
				lc := model.LoRAConfig{Rank: 4, Alpha: 8, Targets: targets, TrainRows: []int{row}, TrainNorms: arch == "qwen2"}
				ad, err := model.NewLoRA(m, lc, 5)
				if err != nil {
					t.Fatal(err)
				}
				m.SetAdapter(ad)
				var res result
				res.losses, res.grads = loraSteps(t, be, m, ad, row)
				res.inUse = be.MemStats().InUse
				if frozen {
					q := m.Layers[0].Attn.Q.W
					held, src := make([]float32, q.N), make([]float32, q.N)
					be.Download(held, q)
					fetch, closeSrc, err := m.OpenSource()
					if err != nil {
						t.Fatal(err)
					}
					if err := fetch(model.LayerPrefix(0)+"self_attn.q_proj.weight", src); err != nil {
						t.Fatal(err)
					}
					closeSrc()
					for i := range held {
						res.rounded = res.rounded || held[i] != src[i]
					}
					// ParamFetch reads what the device holds, bf16 and float32
					// parts alike; FetchFrom a buffer laid out as m.Layout.
					lay := be.Alloc(m.Layout.Total)
					hostLay := make([]float32, lay.N)
					for i := range hostLay {
						hostLay[i] = float32(i)
					}
					be.Upload(lay, hostLay)
					for _, name := range []string{model.LayerPrefix(0) + "self_attn.q_proj.weight", model.NormName} {
						want, _ := m.Tensor(name)
						w, got, fromLay := make([]float32, want.N), make([]float32, want.N), make([]float32, want.N)
						be.Download(w, want)
						lv, _ := m.Layout.View(kernels.Buf{Host: hostLay, N: len(hostLay)}, name)
						if err := m.ParamFetch()(name, got); err != nil {
							t.Fatal(err)
						}
						if err := m.FetchFrom(lay)(name, fromLay); err != nil {
							t.Fatal(err)
						}
						for i := range w {
							if got[i] != w[i] || fromLay[i] != lv.Host[i] {
								t.Fatalf("%s[%d]: ParamFetch %v, held %v; FetchFrom %v, laid out %v", name, i, got[i], w[i], fromLay[i], lv.Host[i])
							}
						}
					}
					be.Free(lay)
				}
				res.merged = map[string][]float32{}
				fetch, closeFetch, err := ad.OpenMerged(m)
				if err != nil {
					t.Fatal(err)
				}
				defer closeFetch()
				for _, s := range m.ExportSpecs() {
					v := make([]float32, s.Elements())
					if err := fetch(s.Name, v); err != nil {
						t.Fatal(err)
					}
					res.merged[s.Name] = v
				}
				if err := be.Err(); err != nil {
					t.Fatal(err)
				}
				return res
			}
			ref, got := run(false), run(true)
			if !got.rounded {
				t.Fatal("the bf16 weights equal the float32 ones: nothing was tested")
			}
			for s := range ref.losses {
				if math.Float64bits(ref.losses[s]) != math.Float64bits(got.losses[s]) {
					t.Errorf("step %d: loss %.9g on the bf16 base, %.9g on the fp32 one", s+1, got.losses[s], ref.losses[s])
				}
				for i := range ref.grads[s] {
					if math.Float32bits(ref.grads[s][i]) != math.Float32bits(got.grads[s][i]) {
						t.Fatalf("step %d: adapter gradient %d is %g on the bf16 base, %g on the fp32 one", s+1, i, got.grads[s][i], ref.grads[s][i])
					}
				}
			}
			for name, v := range ref.merged {
				w := got.merged[name]
				for i := range v {
					if math.Float32bits(v[i]) != math.Float32bits(w[i]) {
						t.Fatalf("merged %s[%d] is %g from the bf16-holding model, %g from the fp32 one", name, i, w[i], v[i])
					}
				}
			}
			if got.inUse >= ref.inUse {
				t.Errorf("the bf16 base holds %d device bytes, the fp32 one %d", got.inUse, ref.inUse)
			}
			t.Logf("device bytes in use: %d with the bf16 base, %d with fp32", got.inUse, ref.inUse)
		})
	}
}

// float32Copy writes the checkpoint in dir to a temporary folder in float32
// with every weight nudged off the bf16 grid (the tiny checkpoints are
// stored in bf16, where holding the base in bf16 would round nothing).
func float32Copy(t *testing.T, dir string) string {
	m, err := model.Load(dir, cpu.New(1))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range m.Params.Host {
		m.Params.Host[i] = v * float32(1+1e-3*math.Sin(float64(i)))
	}
	out := t.TempDir()
	if _, err := safetensors.Write(out, m.ExportSpecs(), m.ParamFetch(), safetensors.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil {
			err = os.WriteFile(filepath.Join(out, f), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestEmulatorLoRAConvert: a whole LoRA conversion on the emulated device
// with bf16 matmuls holds the base in bf16 and still exports every frozen
// tensor byte for byte as the float32 source has it, and each adapted one
// as W + (alpha/r) B A of the source's W.
func TestEmulatorLoRAConvert(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	src := float32Copy(t, "../../testdata/tiny/qwen2")
	var text strings.Builder
	for d := 0; d < 40; d++ {
		for w := 0; w < 30; w++ {
			fmt.Fprintf(&text, "w%d ", (d*7+w*3)%23)
		}
		text.WriteString("\n\n")
	}
	data := filepath.Join(t.TempDir(), "corpus.txt")
	if err := os.WriteFile(data, []byte(text.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	o := convert.Defaults()
	o.Source, o.Data, o.Out = src, []string{data}, filepath.Join(t.TempDir(), "out")
	o.Steps, o.SeqLen, o.BatchSize, o.LR, o.LRSchedule, o.Warmup = 3, 16, 2, 1e-2, "constant", 0
	o.EvalRows, o.EvalMC, o.EvalEvery, o.SaveEvery, o.Quiet, o.EvalFraction = 2, 1, 0, 0, true, 0.1
	o.LoRARank, o.LoRAAlpha = 4, 8
	if err := o.Resolve(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	if _, err := convert.Run(context.Background(), o, newEmuBackend(t, "bf16"), &log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "held once in bf16") {
		t.Errorf("the run did not hold the base in bf16:\n%s", log.String())
	}
	final := filepath.Join(o.Out, "final")
	out, err := safetensors.OpenFile(filepath.Join(final, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, _ := safetensors.OpenFile(filepath.Join(src, "model.safetensors"))
	defer in.Close()
	inR, _ := safetensors.Open(src)
	defer inR.Close()
	outR, err := safetensors.Open(final)
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	ad, err := safetensors.Open(filepath.Join(final, "adapter", "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ad.Close()
	var adapted, frozen int
	for _, n := range inR.Names() {
		got, err1 := out.Raw(n)
		want, err2 := in.Raw(n)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		mod := strings.TrimSuffix(n, ".weight")
		A, err := ad.Float32(model.PEFTPrefix + mod + ".lora_A.weight")
		if err != nil {
			if n != model.EmbedName && !bytes.Equal(got, want) {
				t.Errorf("frozen %s differs from the source", n)
			}
			frozen++
			continue
		}
		B, _ := ad.Float32(model.PEFTPrefix + mod + ".lora_B.weight")
		W, _ := inR.Float32(n)
		M, _ := outR.Float32(n)
		info, _ := in.Info(n)
		cols, r := int(info.Shape[1]), o.LoRARank
		for i := range W {
			var ba float64
			for k := 0; k < r; k++ {
				ba += float64(B[(i/cols)*r+k]) * float64(A[k*cols+i%cols])
			}
			if want := float64(W[i]) + 2*ba; math.Abs(float64(M[i])-want) > 1e-6+1e-5*math.Abs(want) {
				t.Fatalf("%s[%d]: merged %g, W + (alpha/r) B A = %g", n, i, M[i], want)
			}
		}
		adapted++
	}
	if adapted == 0 || frozen == 0 {
		t.Errorf("%d adapted and %d frozen tensors checked", adapted, frozen)
	}
}

// loraSteps trains the adapter ad of m for three AdamW steps on fixed
// B2 x L16 batches with recompute, every fourth id the row given (none
// when row < 0), and returns each step's loss and adapter gradients.
func loraSteps(t *testing.T, be *Backend, m *model.Model, ad *model.LoRA, row int) (losses []float64, grads [][]float32) {
	t.Helper()
	const B, L = 2, 16
	a := m.NewActivationsWith(B, L, model.ActOptions{Training: true, Recompute: true})
	mom, vel := be.Alloc(ad.Params.N), be.Alloc(ad.Params.N)
	be.Zero(mom)
	be.Zero(vel)
	vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.5, Seed: 9}
	for step := 1; step <= 3; step++ {
		rows := a.ScoreRows(B * L / 2)
		for i := 0; i < B*L; i++ {
			a.IDs[i] = int32((i*37 + 11*step) % m.Cfg.Vocab)
			if row >= 0 && i%4 == 1 {
				a.IDs[i] = int32(row)
			}
		}
		for k := range rows {
			rows[k], a.Targets[k], a.Weights[k] = int32(2*k), int32((k*53+5*step)%m.Cfg.Vocab), 1
		}
		a.Upload(be)
		be.Zero(ad.Grads)
		loss, g := lossAndGrads(t, m, a, vis, len(rows), ad.Grads)
		losses, grads = append(losses, loss), append(grads, g)
		bc1, bc2 := 1-math.Pow(0.9, float64(step)), 1-math.Pow(0.999, float64(step))
		be.AdamWStep(ad.Params, ad.Grads, mom, vel, ad.Params.N, kernels.AdamW{LR: 0.02, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8,
			WeightDecay: 0.01, BC1: float32(bc1), BC2: float32(bc2), GradScale: 1})
		ad.CopyInto(m)
	}
	return losses, grads
}

// lossAndGrads runs a's forward, its loss over n rows and the backward,
// and returns the loss and the gradients in grads (an adapter's).
func lossAndGrads(t *testing.T, m *model.Model, a *model.Activations, vis kernels.Visibility, n int, grads kernels.Buf) (float64, []float32) {
	t.Helper()
	m.Forward(a, vis)
	loss, _ := m.Loss(a, float64(n), true)
	if err := m.Backward(a, vis); err != nil {
		t.Fatal(err)
	}
	g := make([]float32, grads.N)
	m.BE.Download(g, grads)
	return loss, g
}
