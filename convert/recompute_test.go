package convert

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// TestRecomputeRun: a conversion with --recompute (plain rows, then block
// diffusion rows of [xt ; x0], with embedding noise) gives the same loss and
// gradient norm at every step, bit for bit, and the same final weights.
func TestRecomputeRun(t *testing.T) {
	data := writeCorpus(t)
	runs := map[bool]Options{}
	for _, rc := range []bool{false, true} {
		o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
		o.BlockSchedule, o.Steps, o.EmbedNoise, o.Recompute = "full:3,4:3", 6, 2, rc
		if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
			t.Fatal(err)
		}
		runs[rc] = o
	}
	a, b := readMetrics(t, runs[false].Out), readMetrics(t, runs[true].Out)
	if len(a) != 6 || len(b) != 6 {
		t.Fatalf("%d and %d train records, want 6", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("step %d: without recompute %v, with %v", i+1, a[i], b[i])
		}
	}
	wa, _ := os.ReadFile(filepath.Join(runs[false].Out, "final", "model.safetensors"))
	wb, _ := os.ReadFile(filepath.Join(runs[true].Out, "final", "model.safetensors"))
	if len(wa) == 0 || string(wa) != string(wb) {
		t.Error("exported weights differ (or are missing)")
	}
}

// readMetrics returns (loss, grad_norm) of every train record.
func readMetrics(t *testing.T, out string) [][2]float64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var rs [][2]float64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r["type"] == "train" {
			rs = append(rs, [2]float64{r["loss"].(float64), r["grad_norm"].(float64)})
		}
	}
	return rs
}
