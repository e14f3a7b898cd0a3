package convert

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
)

// TestRefusedBeforeAllocating: the 41.7M llama at batch 64 x 2048 does not
// fit in 24 GiB; the run is refused in one line that names what it needs,
// what there is and what would fit, before the output folder exists.
func TestRefusedBeforeAllocating(t *testing.T) {
	availableFor = func(kernels.Backend) (float64, string) { return 24 << 30, "MemAvailable" }
	defer func() { availableFor = model.Available }()
	raw, err := os.ReadFile("../testdata/configs/llama-42m.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]any{}
	for _, k := range []string{"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings"} {
		set[k] = cfg.Raw[k]
	}
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Source, o.Init, o.BatchSize, o.SeqLen = doctored(t, set), "random", 64, 2048
	p, err := PlanOf(cfg, &o, "cpu", "")
	if err != nil {
		t.Fatal(err)
	}
	if p.TotalBytes < 24<<30 {
		t.Fatalf("plan of 64 x 2048: %d bytes, want more than 24 GiB", p.TotalBytes)
	}
	_, err = Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil {
		t.Fatal("a run of 64 x 2048 was not refused")
	}
	msg := err.Error()
	for _, want := range []string{"not enough memory: the run needs", "24.0 GiB is available (MemAvailable)", "--recompute", "--batch-size", "--grad-accum"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("refusal is more than one line: %q", msg)
	}
	if _, err := os.Stat(o.Out); !os.IsNotExist(err) {
		t.Error("output folder made for a refused run")
	}
	// The batch the refusal names fits; the run of batch 1 x 2048 is not refused by the plan.
	o.BatchSize = 1
	if p, _ := PlanOf(cfg, &o, "cpu", ""); p.TotalBytes > 24<<30 {
		t.Errorf("batch 1 x 2048 plans %d bytes", p.TotalBytes)
	}
}
