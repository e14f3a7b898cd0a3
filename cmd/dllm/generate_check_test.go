package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// TestGenerateRefusesBadSettings: settings that are not numbers in range, a
// prompt beyond the model's context and lengths whose buffers cannot be
// allocated are refused with one line before anything is allocated, exit 2
// (bad input, as flag errors).
func TestGenerateRefusesBadSettings(t *testing.T) {
	tiny := filepath.Join(moduleRoot(t), "testdata/tiny/llama") // max_position_embeddings 256
	long := strings.Repeat("5,", 300)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--temperature", "NaN"}, "--temperature must be a number >= 0"},
		{[]string{"--temperature", "-1"}, "--temperature must be a number >= 0"},
		{[]string{"--top-k", "-3"}, "--top-k must be >= 0"},
		{[]string{"--top-p", "NaN"}, "--top-p must be in [0, 1]"},
		{[]string{"--threshold", "NaN"}, "--threshold must be in [0, 1)"},
		{[]string{"--steps", "-1"}, "--steps must be >= 0"},
		{[]string{"--block-len", "-8"}, "--block-len must be >= 0"},
		{[]string{"--batch", "-2"}, "--batch must be positive"},
		{[]string{"--gen-len", "0"}, "--gen-len must be positive"},
		{[]string{"--gen-len", "1000000000000"}, "beyond the model's context of 256"},
		{[]string{"--gen-len", "200", "--ids", long}, "the prompt is 300 tokens, longer than the model's context of 256"},
		{[]string{"--ids", "1,x"}, `--ids: "x" is not an integer`},
		{[]string{"--ids", "1,384"}, "prompt token 384 is outside the vocabulary (384)"},
		{[]string{"--gen-len", "x"}, "invalid argument"}, // a flag error, for comparison
	} {
		args := append([]string{"generate", tiny, "--ar", "--ids", "1,5,6", "--threads", "1"}, c.args...)
		_, _, err := dllm(t, args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != 2 {
			t.Errorf("%v: got %v (exit %d), want %q, exit 2", c.args, err, exitCode(err), c.want)
		}
	}
	// Diffusion: the same, and an unknown --alg (ignored with --ar), before
	// the weights are loaded.
	nan := nanDiffusion(t, false)
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--alg", "maskgit"}, `unknown --alg "maskgit"`, 2},
		{[]string{"--threshold", "1"}, "--threshold must be in [0, 1)", 2},
		{[]string{"--gen-len", "254"}, "beyond the model's context of 256", 2},
		{[]string{"--ar", "--alg", "maskgit"}, "NaN", 2}, // the weights are loaded and refused (model.DirError)
	} {
		_, _, err := dllm(t, append([]string{"generate", nan, "--ids", "1,5,6", "--threads", "1", "--device", "cpu"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != c.code {
			t.Errorf("diffusion %v: got %v (exit %d), want %q, exit %d", c.args, err, exitCode(err), c.want, c.code)
		}
	}
	// generate --chat and chat: the same, before the weights are loaded
	// (the settings), or before a turn is decoded (its length).
	tmpl := filepath.Join(moduleRoot(t), "testdata/chat/chatml.jinja")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--temperature", "NaN"}, "--temperature must be a number >= 0"},
		{[]string{"--top-k", "-3"}, "--top-k must be >= 0"},
		{[]string{"--gen-len", "250"}, "beyond the model's context of 256"},
		{[]string{"--gen-len", "0"}, "--gen-len must be positive"},
	} {
		for _, cmd := range [][]string{
			{"generate", tiny, "--chat", "--prompt", "hi"},
			{"chat", tiny},
		} {
			root := newRoot()
			root.SetIn(strings.NewReader("hi\n"))
			root.SetOut(io.Discard)
			root.SetErr(io.Discard)
			root.SetArgs(append(append(cmd, "--ar", "--chat-template", tmpl, "--threads", "1"), c.args...))
			if err := root.Execute(); err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != 2 {
				t.Errorf("%s %v: got %v (exit %d), want %q, exit 2", cmd[0], c.args, err, exitCode(err), c.want)
			}
		}
	}
	// Without --ar, the AR model is refused as not a diffusion checkpoint.
	for _, cmd := range [][]string{{"generate", tiny, "--chat", "--prompt", "hi"}, {"chat", tiny}} {
		root := newRoot()
		root.SetIn(strings.NewReader("hi\n"))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append(cmd, "--chat-template", tmpl, "--threads", "1"))
		if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "not a diffusion checkpoint") || exitCode(err) != 2 {
			t.Errorf("%s of an AR model without --ar: got %v (exit %d), want exit 2", cmd[0], err, exitCode(err))
		}
	}
}

// TestGenerateMemoryPlan: a batch whose activations and KV cache exceed the
// memory is refused; a missing file or a FIFO as --prompt-file is refused
// at once, exit 2.
func TestGenerateMemoryPlan(t *testing.T) {
	out, _ := convertTiny(t)
	final := filepath.Join(out, "final")
	_, _, err := dllm(t, "generate", final, "--ids", "1,5", "--gen-len", "254", "--batch", "100000000", "--threads", "1")
	if err == nil || !strings.Contains(err.Error(), "not enough memory: the weights and activations of 100000000 x 256 tokens need") ||
		!strings.Contains(err.Error(), "lower --gen-len or --batch") {
		t.Fatalf("got %v", err)
	}
	// A --prompt-file that cannot be read is bad input.
	none := filepath.Join(t.TempDir(), "none.txt")
	if _, _, err := dllm(t, "generate", final, "--prompt-file", none); err == nil || err.Error() != "--prompt-file: no such file or directory" || exitCode(err) != 2 {
		t.Errorf("--prompt-file missing: got %v (exit %d), want exit 2", err, exitCode(err))
	}
	fifo := filepath.Join(t.TempDir(), "prompt")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("no FIFOs: %v", err)
	}
	if _, _, err := dllm(t, "generate", final, "--prompt-file", fifo); err == nil || !strings.Contains(err.Error(), "named pipe") || exitCode(err) != 2 {
		t.Fatalf("--prompt-file FIFO: got %v (exit %d), want exit 2", err, exitCode(err))
	}
}

// TestGenerateNaNWeights: a checkpoint whose weights are NaN is named as
// such instead of sampling garbage.
func TestGenerateNaNWeights(t *testing.T) {
	dir := nanCopy(t, filepath.Join(moduleRoot(t), "testdata/tiny/llama"), nil)
	_, _, err := dllm(t, "generate", dir, "--ar", "--ids", "1,5", "--gen-len", "4", "--threads", "1")
	if err == nil || !strings.Contains(err.Error(), "hold NaN or infinite values") {
		t.Fatalf("got %v", err)
	}
}

// TestMemoryPlanRefusal: generate and eval refuse, before loading the
// weights, a request whose memory plan (the one 'dllm plan --inference'
// prints) exceeds what is available by one byte, naming the plan's total,
// and run when exactly that much is available.
func TestMemoryPlanRefusal(t *testing.T) {
	out, data := convertTiny(t)
	final, src := filepath.Join(out, "final"), filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	defer func() { availableFor = model.Available }()
	planned := func(args ...string) int64 {
		p := planJSON(t, append([]string{final, "--inference", "--threads", "1"}, args...)...)
		if p.TotalBytes <= 0 || (p.KVCacheBytes > 0) != slices.Contains(args, "--kv-cache") {
			t.Fatalf("plan %v: %+v", args, p)
		}
		return p.TotalBytes
	}
	for _, c := range []struct {
		total int64
		args  []string
		fix   string
	}{
		// 2 prompt ids + 20 generated, 3 rows
		{planned("--batch-size", "3", "--seq-len", "22"), []string{"generate", final, "--ids", "1,5", "--gen-len", "20", "--batch", "3"}, "lower --gen-len or --batch"},
		{planned("--batch-size", "4", "--seq-len", "32"), []string{"eval", final, "--data", data, "--seq-len", "32", "--batch-size", "4", "--mc", "1", "--rows", "2"}, "lower --batch-size or --seq-len"},
		{planned("--batch-size", "2", "--seq-len", "32"), []string{"eval", src, "--data", data, "--seq-len", "32", "--batch-size", "2", "--max-tokens", "64"}, "lower --batch-size or --seq-len"},
	} {
		args := append(c.args, "--threads", "1")
		availableFor = func(kernels.Backend) (float64, string) { return float64(c.total - 1), "MemAvailable" }
		_, _, err := dllm(t, args...)
		want := "need " + model.FormatBytes(float64(c.total)) + " ("
		if err == nil || !strings.HasPrefix(err.Error(), "not enough memory: ") || !strings.Contains(err.Error(), want) ||
			!strings.HasSuffix(err.Error(), "is available (MemAvailable): "+c.fix) {
			t.Errorf("%v with %d bytes available: %v; want the plan's %q", c.args, c.total-1, err, want)
		}
		availableFor = func(kernels.Backend) (float64, string) { return float64(c.total), "MemAvailable" }
		if _, stderr, err := dllm(t, args...); err != nil {
			t.Errorf("%v with the plan's %d bytes available: %v\n%s", c.args, c.total, err, stderr)
		}
	}
	// AR decoding plans a prefill, a step and the KV cache; a task its rows.
	tk := writeFile(t, "task.jsonl", tinyChoiceTask)
	for _, args := range [][]string{
		{"generate", src, "--ar", "--ids", "1,5", "--gen-len", "20"},
		{"eval", final, "--task", tk, "--mc", "2"},
	} {
		availableFor = func(kernels.Backend) (float64, string) { return 1 << 10, "MemAvailable" }
		_, _, err := dllm(t, append(args, "--threads", "1")...)
		if err == nil || !strings.HasPrefix(err.Error(), "not enough memory: ") && !strings.Contains(err.Error(), ": not enough memory: ") {
			t.Errorf("%v with 1 KiB available: %v", args, err)
		}
		if args[2] == "--ar" && !strings.Contains(err.Error(), "KV cache") {
			t.Errorf("AR decoding's plan has no KV cache: %v", err)
		}
	}
}

// TestGenerateOpenHint: a folder generate cannot open for its tokenizer
// gets the hint that --ids needs no tokenizer; missing weights, an --adapter
// refusal and a config that cannot be read, which --ids does not mend, do
// not.
func TestGenerateOpenHint(t *testing.T) {
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	noTok, noWeights := t.TempDir(), t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(noTok, f), b, 0o644)
		if f == "config.json" {
			os.WriteFile(filepath.Join(noWeights, f), b, 0o644)
		}
	}
	const hint = "(or give the prompt as --ids)"
	if _, _, err := dllm(t, "generate", noTok, "--prompt", "hi"); err == nil || !strings.Contains(err.Error(), "has no tokenizer.json") || !strings.HasSuffix(err.Error(), hint) {
		t.Errorf("no tokenizer.json: %v; want the %q hint", err, hint)
	}
	if _, _, err := dllm(t, "generate", noWeights, "--prompt", "hi"); err == nil || !strings.Contains(err.Error(), "has no weights") || strings.Contains(err.Error(), "--ids") {
		t.Errorf("no weights: %v; want the refusal without the --ids hint", err)
	}
	var err error
	_, _, err = dllm(t, "generate", src, "--prompt", "hi", "--adapter", t.TempDir())
	if err == nil || !strings.HasPrefix(err.Error(), "--adapter ") || strings.Contains(err.Error(), "--ids") {
		t.Errorf("a folder that is no adapter: %v; want the --adapter refusal without the --ids hint", err)
	}
	// Nor a config that cannot be read: --ids needs it too.
	badType := t.TempDir()
	os.WriteFile(filepath.Join(badType, "config.json"), []byte(`{"model_type": "gpt2"}`), 0o644)
	for dir, want := range map[string]string{filepath.Join(t.TempDir(), "none"): "no such folder", badType: `model_type "gpt2" is not supported`} {
		if _, _, err := dllm(t, "generate", dir, "--prompt", "hi"); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "--ids") {
			t.Errorf("%s: %v; want %q without the --ids hint", dir, err, want)
		}
	}
}
