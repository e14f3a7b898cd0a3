package convert

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

type moeMetric struct {
	Type         string
	Loss         float64
	AuxLoss      *float64 `json:"aux_loss"`
	ExpertCounts [][]int  `json:"expert_counts"`
}

func moeMetrics(t *testing.T, out string) []moeMetric {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ms []moeMetric
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m moeMetric
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m.Type == "train" {
			ms = append(ms, m)
		}
	}
	return ms
}

// TestConvertMoE converts each tiny MoE checkpoint for a few steps: every
// train line of metrics.jsonl carries the load-balancing loss and the
// tokens per expert of each sparse layer (all k choices of every token of
// the step counted), the export keeps every tensor name of the source, and
// --router-aux-coef 0 changes the training (the aux gradient was on).
func TestConvertMoE(t *testing.T) {
	data := writeCorpus(t)
	bad := tinyOptions(data, t.TempDir())
	bad.RouterAuxCoef = -2
	if err := bad.Resolve(); err == nil {
		t.Error("--router-aux-coef -2 accepted")
	}
	for _, arch := range []string{"qwen2_moe", "qwen3_moe", "mixtral"} {
		t.Run(arch, func(t *testing.T) {
			src := filepath.Join("..", "testdata", "tiny", arch)
			cfg, err := model.LoadConfig(src)
			if err != nil {
				t.Fatal(err)
			}
			o := tinyOptions(data, filepath.Join(t.TempDir(), "out"))
			o.Source, o.Steps, o.RouterAuxCoef = src, 4, 0.5
			sum, err := Run(context.Background(), o, cpu.New(2), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			ms := moeMetrics(t, o.Out)
			if len(ms) != 4 {
				t.Fatalf("%d train lines", len(ms))
			}
			tokens := o.BatchSize * o.SeqLen * cfg.MoE.TopK
			for i, m := range ms {
				if m.AuxLoss == nil || !(*m.AuxLoss > 0) || len(m.ExpertCounts) != len(cfg.SparseLayers()) {
					t.Fatalf("step %d: aux %v, counts %v", i+1, m.AuxLoss, m.ExpertCounts)
				}
				for l, c := range m.ExpertCounts {
					n := 0
					for _, v := range c {
						n += v
					}
					if len(c) != cfg.MoE.Experts || n != tokens {
						t.Errorf("step %d layer %d: counts %v, want %d experts summing to %d", i+1, l, c, cfg.MoE.Experts, tokens)
					}
				}
			}
			want, err := safetensors.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			got, err := safetensors.Open(sum.Export)
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			defer got.Close()
			if !slices.Equal(want.Names(), got.Names()) {
				t.Errorf("export tensors %v, source %v", got.Names(), want.Names())
			}

			o.Out, o.RouterAuxCoef = filepath.Join(t.TempDir(), "noaux"), 0
			if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
				t.Fatal(err)
			}
			off := moeMetrics(t, o.Out)
			if off[0].Loss >= ms[0].Loss || off[len(off)-1].Loss == ms[len(ms)-1].Loss {
				t.Errorf("--router-aux-coef 0: losses %v vs %v with 0.5", off[0].Loss, ms[0].Loss)
			}
		})
	}
}
