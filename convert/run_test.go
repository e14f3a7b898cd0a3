package convert

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
	"github.com/dllm-dev/dllm/tokenizer"
)

const tinyLlama = "../testdata/tiny/llama"

// writeCorpus writes a small English-like corpus of blank-line separated
// documents.
func writeCorpus(t *testing.T) string {
	t.Helper()
	words := strings.Fields("the cat sat on a mat and the dog ran to the park where a bird sang while children played with a red ball in the sun")
	var b strings.Builder
	for d := 0; d < 60; d++ {
		for s := 0; s < 3+d%4; s++ {
			for w := 0; w < 8; w++ {
				b.WriteString(words[(d*7+s*5+w*3)%len(words)])
				b.WriteByte(' ')
			}
			b.WriteString(". ")
		}
		b.WriteString("\n\n")
	}
	p := filepath.Join(t.TempDir(), "corpus.txt")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func tinyOptions(data, out string) Options {
	o := Defaults()
	o.Source, o.Data, o.Out = tinyLlama, []string{data}, out
	o.Steps, o.SeqLen, o.BatchSize, o.LR, o.LRSchedule, o.Warmup = 6, 32, 4, 1e-3, "constant", 0
	o.EvalRows, o.EvalMC, o.EvalEvery, o.SaveEvery, o.Quiet, o.Threads = 4, 2, 0, 0, true, 2
	o.EvalFraction = 0.1
	return o
}

type metric struct {
	Type string
	Step int
	Loss float64
}

func trainLosses(t *testing.T, out string) []metric {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ms []metric
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m metric
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m.Type == "train" {
			ms = append(ms, m)
		}
	}
	return ms
}

// resumeTo continues the run in o.Out to steps, as --resume --steps does.
func resumeTo(t *testing.T, o Options, steps int) {
	t.Helper()
	o.Steps, o.Resume, o.Set = steps, true, []string{"steps"}
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
}

// sameTrainLosses fails unless the uninterrupted run in full and the
// resumed one in resumed both logged n train records, equal step by step;
// it returns full's.
func sameTrainLosses(t *testing.T, full, resumed string, n int) []metric {
	t.Helper()
	a, b := trainLosses(t, full), trainLosses(t, resumed)
	if len(a) != n || len(b) != n {
		t.Fatalf("%d and %d train records, want %d", len(a), len(b), n)
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("step %d: uninterrupted %+v, resumed %+v", i+1, a[i], b[i])
		}
	}
	return a
}

// TestResumeIsExact: a run stopped after 3 steps and resumed to 6 gives the
// same loss at every step, bit for bit, as a run of 6 steps (with embedding
// noise on for the first 4 steps, which must change the losses).
func TestResumeIsExact(t *testing.T) {
	data := writeCorpus(t)
	plain := tinyOptions(data, filepath.Join(t.TempDir(), "plain"))
	if _, err := Run(context.Background(), plain, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	full := tinyOptions(data, filepath.Join(t.TempDir(), "full"))
	full.EmbedNoise = 4
	if _, err := Run(context.Background(), full, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	if p, f := trainLosses(t, plain.Out), trainLosses(t, full.Out); p[0] == f[0] || p[5].Loss == f[5].Loss {
		t.Fatalf("embedding noise changed nothing: %v vs %v", p, f)
	}
	part := tinyOptions(data, filepath.Join(t.TempDir(), "part"))
	part.EmbedNoise = 4
	part.Steps = 3
	if _, err := Run(context.Background(), part, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	resumeTo(t, part, 6)
	sameTrainLosses(t, full.Out, part.Out, 6)
}

// TestInterruptSavesCheckpoint: a cancelled context stops the run with a
// checkpoint that --resume continues.
func TestInterruptSavesCheckpoint(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	ctx, cancel := context.WithCancel(context.Background())
	sum, err := Run(ctx, o, cpu.New(2), cancelOn{"eval before:", cancel})
	if err != ErrInterrupted {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(sum.Checkpoint, "trainer_state.json")); err != nil {
		t.Fatalf("no checkpoint after interrupt: %v", err)
	}
	o.Resume = true
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	if n := len(trainLosses(t, o.Out)); n != 6 {
		t.Fatalf("%d steps after resume, want 6", n)
	}
}

// cancelOn is a log that cancels a context once a line contains s.
type cancelOn struct {
	s      string
	cancel func()
}

func (c cancelOn) Write(p []byte) (int, error) {
	if strings.Contains(string(p), c.s) {
		c.cancel()
	}
	return len(p), nil
}

// TestInterruptBeforeTraining: a context cancelled before the run leaves
// no checkpoint and no output folder.
func TestInterruptBeforeTraining(t *testing.T) {
	o := tinyOptions(writeCorpus(t), filepath.Join(t.TempDir(), "run"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, o, cpu.New(2), io.Discard); err != ErrInterrupted {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	if _, err := os.Stat(o.Out); !os.IsNotExist(err) {
		t.Fatalf("output folder left: %v", err)
	}
}

// TestExportIsAValidSource: the exported folder passes the checkpoint check,
// carries the dllm block and the mask token, and converting it again works.
func TestExportIsAValidSource(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "first"))
	o.DType = "bf16"
	sum, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	final := sum.Export
	cfg, err := model.LoadConfig(final)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DLLM == nil || cfg.DLLM.Steps != 6 || !cfg.DLLM.Shift || cfg.DLLM.MaskTokenID != sum.MaskToken.ID {
		t.Fatalf("dllm block %+v, mask plan %+v", cfg.DLLM, sum.MaskToken)
	}
	r, err := safetensors.Open(final)
	if err != nil {
		t.Fatal(err)
	}
	if problems, _ := cfg.Check(r); len(problems) > 0 {
		t.Fatalf("export does not match its config: %v", problems)
	}
	info, _ := r.Info(model.EmbedName)
	r.Close()
	if info.DType != safetensors.BF16 {
		t.Fatalf("exported dtype %s, want BF16", info.DType)
	}
	tok, err := tokenizer.Load(final)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := tok.ID(sum.MaskToken.Token); !ok || id != sum.MaskToken.ID {
		t.Fatalf("exported tokenizer lacks the mask token %+v", sum.MaskToken)
	}
	for _, f := range []string{"generation_config.json", "README.md"} {
		if _, err := os.Stat(filepath.Join(final, f)); err != nil {
			t.Fatal(err)
		}
	}
	again := tinyOptions(data, filepath.Join(t.TempDir(), "second"))
	again.Source = final
	sum2, err := Run(context.Background(), again, cpu.New(2), io.Discard)
	if err != nil {
		t.Fatalf("a converted model as source: %v", err)
	}
	if sum2.MaskToken.Kind != tokenizer.MaskExisting || sum2.MaskToken.ID != sum.MaskToken.ID {
		t.Fatalf("second conversion should reuse the mask token: %+v", sum2.MaskToken)
	}
}

// TestRefusesToOverwrite: a second run into the same folder needs --resume
// or --force.
func TestRefusesToOverwrite(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 1
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("want a refusal naming --force, got %v", err)
	}
	// --force with data that is refused (too short for one row, not UTF-8)
	// keeps the earlier run: only valid inputs may replace it.
	before, err := os.ReadFile(filepath.Join(o.Out, "final", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string][]byte{"short.txt": []byte("too short."), "latin1.txt": {'c', 'a', 'f', 0xe9, '\n'}} {
		bad := o
		bad.Force, bad.Data = true, []string{filepath.Join(t.TempDir(), name)}
		if err := os.WriteFile(bad.Data[0], text, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Run(context.Background(), bad, cpu.New(2), io.Discard); err == nil {
			t.Fatalf("--force with %s: want a refusal", name)
		}
		after, err := os.ReadFile(filepath.Join(o.Out, "final", "model.safetensors"))
		if err != nil || !bytes.Equal(before, after) {
			t.Fatalf("--force with refused data %s removed or changed the earlier run's final/: %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(o.Out, "metrics.jsonl")); err != nil {
			t.Fatalf("--force with refused data %s: %v", name, err)
		}
	}
	o.Force = true
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatalf("--force: %v", err)
	}
}

func TestLearningRateSchedules(t *testing.T) {
	o := Defaults()
	o.Steps, o.LR, o.MinLR, o.Warmup = 100, 1e-3, 1e-4, 10
	for _, c := range []struct {
		sched string
		step  int
		want  float64
	}{
		{"constant", 0, 1e-4}, {"constant", 50, 1e-3},
		{"cosine", 10, 1e-3}, {"cosine", 55, 5.5e-4}, {"cosine", 100, 1e-4},
		{"wsd", 50, 1e-3}, {"wsd", 79, 1e-3}, {"wsd", 99, 1e-4},
	} {
		o.LRSchedule = c.sched
		if got := o.LearningRate(c.step); fmt.Sprintf("%.6g", got) != fmt.Sprintf("%.6g", c.want) {
			t.Errorf("%s at %d: %g, want %g", c.sched, c.step, got, c.want)
		}
	}
}

// TestBlockSchedule: a run through block sizes 1 -> 4 -> full -> 4 trains
// every stage, resumes exactly across a stage boundary, and exports a block
// checkpoint (attention "block", block size 4) that samples with the cache.
func TestBlockSchedule(t *testing.T) {
	data := writeCorpus(t)
	full := tinyOptions(data, filepath.Join(t.TempDir(), "full"))
	full.BlockSchedule, full.TPer = "1:2,4:2,full:2,4:2", "block"
	if _, err := Run(context.Background(), full, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	part := tinyOptions(data, filepath.Join(t.TempDir(), "part"))
	part.BlockSchedule, part.TPer = full.BlockSchedule, full.TPer
	part.Steps = 3 // a schedule sets the length; resume below continues it
	part.BlockSchedule = "1:2,4:1"
	if _, err := Run(context.Background(), part, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	// Resuming keeps the saved experiment, so rewrite its schedule to the
	// full one through the saved options, as a user extending a run would.
	st, err := readState(checkpointDir(part.Out, 3))
	if err != nil {
		t.Fatal(err)
	}
	st.Options.BlockSchedule = full.BlockSchedule
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(checkpointDir(part.Out, 3), "trainer_state.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	part.Resume, part.Steps, part.Set = true, 8, []string{"steps"}
	sum, err := Run(context.Background(), part, cpu.New(2), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	sameTrainLosses(t, full.Out, part.Out, 8)
	cfg, err := model.LoadConfig(sum.Export)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DLLM.Attention != "block" || cfg.DLLM.BlockSize != 4 {
		t.Fatalf("dllm block %+v, want block attention of 4", cfg.DLLM)
	}
	raw, _ := os.ReadFile(filepath.Join(full.Out, "metrics.jsonl"))
	for _, want := range []string{`"block":1`, `"block":4`, `"block":"full"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("metrics.jsonl lacks %s", want)
		}
	}
}

// TestResumeRefusesChanges: a resumed run keeps its settings; changing what
// it computes is an error, not a silent mix.
func TestResumeRefusesChanges(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 2
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	o.Resume, o.LR, o.Set = true, 0.5, []string{"lr"}
	_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--lr cannot change") {
		t.Fatalf("want a refusal of --lr, got %v", err)
	}
}

// TestResumeOlderCheckpoint: a checkpoint written before a setting existed
// (here --export and --router-aux-coef) resumes with that setting's default,
// and resuming at its own step exports it without training.
func TestResumeOlderCheckpoint(t *testing.T) {
	data := writeCorpus(t)
	o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
	o.Steps = 2
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err != nil {
		t.Fatal(err)
	}
	st := filepath.Join(o.Out, "checkpoint-2", "trainer_state.json")
	b, err := os.ReadFile(st)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	opts := raw["options"].(map[string]any)
	delete(opts, "export")
	delete(opts, "router-aux-coef")
	if b, err = json.Marshal(raw); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(st, b, 0o644); err != nil {
		t.Fatal(err)
	}
	before := trainLosses(t, o.Out)
	if err := os.RemoveAll(filepath.Join(o.Out, "final")); err != nil {
		t.Fatal(err)
	}
	r := Options{Out: o.Out, Steps: 2, Resume: true, Threads: 2, Quiet: true, Set: []string{"steps", "threads", "quiet"}}
	if _, err := Run(context.Background(), r, cpu.New(2), io.Discard); err != nil {
		t.Fatalf("resume of a checkpoint without export/router-aux-coef: %v", err)
	}
	if after := trainLosses(t, o.Out); len(after) != len(before) {
		t.Fatalf("resume at the checkpoint's step trained: %d train records, then %d", len(before), len(after))
	}
	if _, err := os.Stat(filepath.Join(o.Out, "final", "model.safetensors")); err != nil {
		t.Fatalf("no export: %v", err)
	}
}
