package model

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/dllm-dev/dllm/internal/oddshapes"
	"github.com/dllm-dev/dllm/kernels/cpu"
)

// oddConfig is the tiny arch with odd shapes (internal/oddshapes).
func oddConfig(t *testing.T, arch string) *Config {
	t.Helper()
	b, err := oddshapes.Config(filepath.Join("..", "testdata", "tiny", arch))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestLayoutAlignment: with odd shapes every tensor starts at a multiple
// of 8 values (16 bytes in bf16, 32 in float32) of the parameter and
// gradient buffers and of a LoRA adapter's, where packing them end to end
// would not; the plan counts the padding; and the padding changes no
// number: a training step's logits, loss and every tensor's gradient are
// bit for bit those of the unpadded layout.
func TestLayoutAlignment(t *testing.T) {
	defer func(a int) { tensorAlign = a }(tensorAlign)
	for _, arch := range []string{"llama", "qwen2", "qwen3", "qwen2_moe"} {
		t.Run(arch, func(t *testing.T) {
			cfg := oddConfig(t, arch)
			step := func(align int) (*Model, stepResult) {
				tensorAlign = align
				m := New(cfg, cpu.New(1))
				m.InitRandom(3)
				m.EnableGrads()
				return m, runStep(t, m, ActOptions{Training: true}, false)
			}
			packed, pr := step(1)
			m, r := step(8)
			odd := 0
			for i, off := range m.Layout.Offsets {
				if off%8 != 0 {
					t.Fatalf("%s at offset %d", m.Layout.Specs[i].Name, off)
				}
				if packed.Layout.Offsets[i]%8 != 0 {
					odd++
				}
			}
			if odd == 0 {
				t.Fatal("every tensor is aligned without padding: the shapes test nothing")
			}
			if m.Layout.Values != int(cfg.ParamCount()) || packed.Layout.Total != m.Layout.Values || m.Layout.Total <= m.Layout.Values {
				t.Errorf("values %d (config %d), padded length %d, packed %d", m.Layout.Values, cfg.ParamCount(), m.Layout.Total, packed.Layout.Total)
			}
			p, err := ComputePlan(cfg, PlanOptions{SeqLen: 12, BatchSize: 2, Threads: 1})
			if err != nil || p.ParamBytes != 4*int64(m.Params.N) || p.GradBytes != 4*int64(m.Grads.N) || p.Params != int64(m.Layout.Values) {
				t.Errorf("plan: %d parameter and %d gradient bytes for buffers of %d values (%v)", p.ParamBytes, p.GradBytes, m.Params.N, err)
			}
			if math.Float64bits(r.loss) != math.Float64bits(pr.loss) {
				t.Errorf("loss %.9g padded, %.9g packed", r.loss, pr.loss)
			}
			for i := range r.logits {
				if math.Float32bits(r.logits[i]) != math.Float32bits(pr.logits[i]) {
					t.Fatalf("logit %d: %g padded, %g packed", i, r.logits[i], pr.logits[i])
				}
			}
			for i, s := range m.Layout.Specs {
				a := r.grads[m.Layout.Offsets[i] : m.Layout.Offsets[i]+s.Elements()]
				b := pr.grads[packed.Layout.Offsets[i] : packed.Layout.Offsets[i]+s.Elements()]
				for j := range a {
					if math.Float32bits(a[j]) != math.Float32bits(b[j]) {
						t.Fatalf("gradient of %s[%d]: %g padded, %g packed", s.Name, j, a[j], b[j])
					}
				}
			}
			// A LoRA adapter's buffer too, and the plan's count of it.
			lc := LoRAConfig{Rank: 3, Alpha: 6, Targets: LoRATargets, TrainRows: []int{5}, TrainNorms: true}
			if cfg.MoE != nil {
				lc.Targets = []string{"q_proj", "v_proj"}
			}
			ad, err := NewLoRA(New(cfg, cpu.New(1)), lc, 1)
			if err != nil {
				t.Fatal(err)
			}
			for i, off := range ad.Layout.Offsets {
				if off%8 != 0 {
					t.Fatalf("adapter %s at offset %d", ad.Layout.Specs[i].Name, off)
				}
			}
			if n := lc.BufferLen(cfg, 1); n != int64(ad.Params.N) || ad.Trainable() != int(lc.TrainableCount(cfg, 1)) {
				t.Errorf("adapter: buffer %d, BufferLen %d; trainable %d, TrainableCount %d", ad.Params.N, n, ad.Trainable(), lc.TrainableCount(cfg, 1))
			}
		})
	}
}
