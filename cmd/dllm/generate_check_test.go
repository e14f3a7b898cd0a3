package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestGenerateRefusesBadSettings: settings that are not numbers in range, a
// prompt beyond the model's context and lengths whose buffers cannot be
// allocated are refused with one line before anything is allocated.
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
	} {
		args := append([]string{"generate", tiny, "--ar", "--ids", "1,5,6", "--threads", "1"}, c.args...)
		_, _, err := dllm(t, args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want %q", c.args, err, c.want)
		}
	}
}

// TestGenerateMemoryPlan: a batch whose activations and KV cache exceed the
// memory is refused; a FIFO as --prompt-file is refused at once.
func TestGenerateMemoryPlan(t *testing.T) {
	out, _ := convertTiny(t)
	final := filepath.Join(out, "final")
	_, _, err := dllm(t, "generate", final, "--ids", "1,5", "--gen-len", "254", "--batch", "100000000", "--threads", "1")
	if err == nil || !strings.Contains(err.Error(), "is available: lower --gen-len or --batch") {
		t.Fatalf("got %v", err)
	}
	fifo := filepath.Join(t.TempDir(), "prompt")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("no FIFOs: %v", err)
	}
	if _, _, err := dllm(t, "generate", final, "--prompt-file", fifo); err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("--prompt-file FIFO: got %v", err)
	}
}

// TestGenerateNaNWeights: a checkpoint whose weights are NaN is named as
// such instead of sampling garbage.
func TestGenerateNaNWeights(t *testing.T) {
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	dir := t.TempDir()
	for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "model.safetensors" {
			for i := 8 + int(binary.LittleEndian.Uint64(b)); i < len(b); i++ {
				b[i] = 0xff
			}
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	_, _, err := dllm(t, "generate", dir, "--ar", "--ids", "1,5", "--gen-len", "4", "--threads", "1")
	if err == nil || !strings.Contains(err.Error(), "hold NaN or infinite values") {
		t.Fatalf("got %v", err)
	}
}
