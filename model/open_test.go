package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

// TestOpen: the tokenizer's EOS becomes config.json's (documents end with
// the model's EOS), the EOS set keeps both, and the weights load only with
// a backend.
func TestOpen(t *testing.T) {
	src := filepath.Join("..", "testdata", "tiny", "llama")
	dir := t.TempDir()
	for _, f := range []string{"model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "config.json" {
			var raw map[string]any
			json.Unmarshal(b, &raw)
			raw["eos_token_id"] = 7
			b, _ = json.Marshal(raw)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	c, err := Open(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Model != nil || c.Tok.EOS() != 7 || c.Tok.BOS() != 1 || !slices.Equal(c.EOS, []int32{7, 2}) || !c.IsEOS(2) || c.IsEOS(3) {
		t.Errorf("model %v, tokenizer BOS %d EOS %d, EOS set %v", c.Model != nil, c.Tok.BOS(), c.Tok.EOS(), c.EOS)
	}
	c, err = Open(dir, OpenOptions{NoTokenizer: true, Backend: cpu.New(1)})
	if err != nil {
		t.Fatal(err)
	}
	if c.Tok != nil || c.Model == nil || !slices.Equal(c.EOS, []int32{7}) {
		t.Errorf("no tokenizer: tokenizer %v, model %v, EOS set %v", c.Tok != nil, c.Model != nil, c.EOS)
	}
	os.Remove(filepath.Join(dir, "tokenizer.json"))
	if _, err := Open(dir, OpenOptions{}); err == nil {
		t.Error("Open without tokenizer.json succeeded")
	}
}
