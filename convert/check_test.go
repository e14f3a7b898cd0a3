package convert

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// doctored copies the tiny model with config.json keys replaced.
func doctored(t *testing.T, set map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(tinyLlama, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	var cfg map[string]any
	b, _ := os.ReadFile(filepath.Join(tinyLlama, "config.json"))
	json.Unmarshal(b, &cfg)
	for k, v := range set {
		cfg[k] = v
	}
	b, _ = json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	return dir
}

// TestConfigCheckedBeforeUse: values that would panic or exhaust memory are
// refused with one line, with --init random too, before the output folder
// is made.
func TestConfigCheckedBeforeUse(t *testing.T) {
	data := writeCorpus(t)
	for _, c := range []struct {
		set  map[string]any
		gen  string
		want string
	}{
		{map[string]any{"eos_token_id": 384}, "", "eos_token_id 384 is outside the vocabulary"},
		{map[string]any{"rope_theta": 0}, "", "rope_theta must be a positive number"},
		{map[string]any{"rms_norm_eps": -1}, "", "rms_norm_eps must be a positive number"},
		{nil, `{"eos_token_id": [2, 9999]}`, "eos_token_id 9999 is outside"},
		// 100 layers of 4096: 6.5B parameters, 105 GB with the optimizer.
		{map[string]any{"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 100, "num_attention_heads": 32,
			"num_key_value_heads": 32}, "", "is available (MemAvailable)"},
	} {
		src := doctored(t, c.set)
		if c.gen != "" {
			os.WriteFile(filepath.Join(src, "generation_config.json"), []byte(c.gen), 0o644)
		}
		o := tinyOptions(data, filepath.Join(t.TempDir(), "run"))
		o.Source, o.Init = src, "random"
		_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %s: got %v, want %q", c.set, c.gen, err, c.want)
		}
		if _, err := os.Stat(o.Out); !os.IsNotExist(err) {
			t.Errorf("%v: output folder made for a refused run", c.set)
		}
	}
}

// TestFIFOData: a FIFO given as data (or as the tokenizer) is refused at
// once, not read forever.
func TestFIFOData(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "data.txt")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("no FIFOs: %v", err)
	}
	o := tinyOptions(fifo, filepath.Join(dir, "run"))
	t0 := time.Now()
	_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("got %v", err)
	}
	src := doctored(t, nil)
	os.Remove(filepath.Join(src, "tokenizer.json"))
	syscall.Mkfifo(filepath.Join(src, "tokenizer.json"), 0o644)
	o = tinyOptions(writeCorpus(t), filepath.Join(dir, "run2"))
	o.Source = src
	if _, err := Run(context.Background(), o, cpu.New(2), io.Discard); err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("tokenizer.json FIFO: got %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}
