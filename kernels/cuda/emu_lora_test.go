//go:build linux

package cuda

import (
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
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
				m.Forward(a, vis)
				loss, _ := m.Loss(a, float64(len(rows)), true)
				if err := m.Backward(a, vis); err != nil {
					t.Fatal(err)
				}
				g := make([]float32, ad.Grads.N)
				be.Download(g, ad.Grads)
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
