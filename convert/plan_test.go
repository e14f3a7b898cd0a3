package convert

import (
	"context"
	"encoding/json"
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

// planGPU is kernels/cpu planned as a CUDA device with bf16 matmuls: the
// plan and --bf16-copies see a GPU (its products stay the CPU's).
type planGPU struct{ kernels.Backend }

func (planGPU) Name() string            { return "cuda (planned; kernels/cpu computes)" }
func (planGPU) MatmulPrecision() string { return "bf16" }

// TestBF16CopiesAuto: with free memory that fits full fine-tuning only
// without the bf16 copies of the weights, auto drops them (one log line,
// run_config.json says off, the checkpoint keeps auto), on is refused in
// the usual one line naming --bf16-copies off, and a resume may turn them
// on (it stays exact: the copies change no value).
func TestBF16CopiesAuto(t *testing.T) {
	defer func() { availableFor = model.Available }()
	cfg, err := model.LoadConfig(tinyLlama)
	if err != nil {
		t.Fatal(err)
	}
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps, o.SaveEvery = 4, 2
	if err := o.Resolve(); err != nil {
		t.Fatal(err)
	}
	with, err := PlanOf(cfg, &o, "cuda", "bf16")
	if err != nil {
		t.Fatal(err)
	}
	q := o
	q.BF16Copies = "off"
	without, _ := PlanOf(cfg, &q, "cuda", "bf16")
	if with.CopyBytes == 0 || without.TotalBytes >= with.TotalBytes {
		t.Fatalf("plans: %d bytes with copies (%d of them), %d without", with.TotalBytes, with.CopyBytes, without.TotalBytes)
	}
	free := float64(without.TotalBytes+with.TotalBytes) / 2
	availableFor = func(kernels.Backend) (float64, string) { return free, "free on the GPU" }

	on := o
	on.BF16Copies = "on"
	_, err = Run(context.Background(), on, planGPU{cpu.New(2)}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not enough memory") || !strings.Contains(err.Error(), "--bf16-copies off") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("--bf16-copies on that does not fit: %v", err)
	}

	// Stop at step 2, then resume to 4 with the copies on.
	part := o
	part.Steps = 2
	var log strings.Builder
	if _, err := Run(context.Background(), part, planGPU{cpu.New(2)}, &log); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log.String(), "bf16 copies of the weights: off (--bf16-copies auto)"); n != 1 {
		t.Errorf("auto logged the choice %d times:\n%s", n, log.String())
	}
	setting := func(file string) string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			BF16Copies string `json:"bf16-copies"`
			Options    struct {
				BF16Copies string `json:"bf16-copies"`
			} `json:"options"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return v.BF16Copies + v.Options.BF16Copies
	}
	if got := setting(filepath.Join(o.Out, "run_config.json")); got != "off" {
		t.Errorf("run_config.json: bf16-copies %q, want off", got)
	}
	if got := setting(filepath.Join(o.Out, "checkpoint-2", "trainer_state.json")); got != "auto" {
		t.Errorf("trainer_state.json: bf16-copies %q, want auto", got)
	}
	availableFor = func(kernels.Backend) (float64, string) { return 1 << 40, "free on the GPU" }
	r := Options{Out: o.Out, Steps: 4, Resume: true, BF16Copies: "on", Threads: 2, Quiet: true, Set: []string{"steps", "threads", "quiet", "bf16-copies"}}
	if _, err := Run(context.Background(), r, planGPU{cpu.New(2)}, io.Discard); err != nil {
		t.Fatalf("resume with --bf16-copies on: %v", err)
	}
	if got := setting(filepath.Join(o.Out, "run_config.json")); got != "on" {
		t.Errorf("resumed run_config.json: bf16-copies %q, want on", got)
	}
	full := o
	full.Out = filepath.Join(t.TempDir(), "full")
	if _, err := Run(context.Background(), full, planGPU{cpu.New(2)}, io.Discard); err != nil {
		t.Fatal(err)
	}
	sameTrainLosses(t, full.Out, o.Out, 4)
}
