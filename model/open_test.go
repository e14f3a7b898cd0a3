package model

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// TestDirError: a folder Open, OpenDir and Load cannot use for what it is
// (not there, a file, no config.json, config.json not JSON, no weights,
// weights that do not fit the config, no tokenizer.json) is a *DirError
// naming the folder in one line that says what to do; a missing folder
// still matches fs.ErrNotExist.
func TestDirError(t *testing.T) {
	src := filepath.Join("..", "testdata", "tiny", "llama")
	tmp := t.TempDir()
	mk := func(name string, files map[string]string) string {
		dir := filepath.Join(tmp, name)
		os.Mkdir(dir, 0o755)
		for f, from := range files {
			b := []byte(from)
			if !strings.HasPrefix(from, "{") {
				var err error
				if b, err = os.ReadFile(filepath.Join(src, from)); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
		return dir
	}
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, []byte("hi"), 0o644)
	qwen, err := os.ReadFile(filepath.Join("..", "testdata", "tiny", "qwen2", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	absent := filepath.Join(tmp, "absent")
	// by: the calls that refuse it: Load, Open with a Backend, OpenDir,
	// Open without one (the others pass it).
	for _, c := range []struct{ dir, want, by string }{
		{absent, absent + ": no such folder: pass a Hugging Face model folder (config.json and *.safetensors)", "LBDO"},
		{file, file + " is a file, not a folder: pass a Hugging Face model folder", "LBDO"},
		{mk("empty", nil), "has no config.json: is it a model folder?", "LBDO"},
		{mk("notjson", map[string]string{"config.json": "{model"}), "config.json: not valid JSON", "LBDO"},
		{mk("noweights", map[string]string{"config.json": "config.json", "tokenizer.json": "tokenizer.json"}), "has no weights (*.safetensors): is it a model folder?", "LBDO"},
		// The weights are named before the tokenizer.
		{mk("onlyconfig", map[string]string{"config.json": "config.json"}), "has no weights (*.safetensors): is it a model folder?", "LBDO"},
		{mk("bin", map[string]string{"config.json": "config.json", "tokenizer.json": "tokenizer.json", "pytorch_model.bin": "{}"}), "only pytorch_model.bin: dllm reads safetensors", "LBDO"},
		{mk("other", map[string]string{"config.json": string(qwen), "tokenizer.json": "tokenizer.json", "model.safetensors": "model.safetensors"}), "does not match its config.json", "LB"},
		{mk("notok", map[string]string{"config.json": "config.json", "model.safetensors": "model.safetensors"}), "has no tokenizer.json: copy the model's tokenizer.json", "BO"},
	} {
		be := cpu.New(1)
		errs := map[string]error{}
		_, errs["L"] = Load(c.dir, be)
		_, errs["B"] = Open(c.dir, OpenOptions{Backend: be})
		_, _, errs["D"] = OpenDir(c.dir)
		_, errs["O"] = Open(c.dir, OpenOptions{})
		for what, err := range errs {
			var de *DirError
			switch {
			case !strings.Contains(c.by, what):
				if err != nil {
					t.Errorf("%s(%s): %v, want no error", what, c.dir, err)
				}
			case !errors.As(err, &de) || de.Dir != c.dir || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n"):
				t.Errorf("%s(%s): %v (%T), want a *DirError with %q", what, c.dir, err, err, c.want)
			}
		}
	}
	if _, err := Open(absent, OpenOptions{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing folder: %v does not match fs.ErrNotExist", err)
	}
	// The --out folder of a convert run: the hint names its final/.
	out := filepath.Join(tmp, "run")
	os.MkdirAll(filepath.Join(out, "final"), 0o755)
	os.WriteFile(filepath.Join(out, "final", "config.json"), []byte(mistralConfig), 0o644)
	if _, err := Open(out, OpenOptions{}); err == nil || !strings.HasSuffix(err.Error(), "pass "+filepath.Join(out, "final")) {
		t.Errorf("a convert --out folder: %v, want the hint to pass its final/", err)
	}
	// LoadConfig also takes the file itself; JSON that is no object is bad.
	arr := filepath.Join(tmp, "array.json")
	os.WriteFile(arr, []byte("[1]"), 0o644)
	var de *DirError
	if _, err := LoadConfig(arr); !errors.As(err, &de) || !strings.Contains(err.Error(), "a model's config.json is one JSON object") {
		t.Errorf("LoadConfig of a JSON array: %v", err)
	}
	if _, err := LoadConfig(absent); !errors.As(err, &de) || !strings.Contains(err.Error(), "pass a Hugging Face model folder or its config.json") {
		t.Errorf("LoadConfig of nothing: %v", err)
	}
}
