package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlanCommand: dllm plan on a bare config.json and on a model folder;
// --json has total_bytes; --recompute plans less; bad flags are one line.
func TestPlanCommand(t *testing.T) {
	root := moduleRoot(t)
	qwen := filepath.Join(root, "testdata", "configs", "qwen2.5-7b.json")
	total := func(args ...string) int64 {
		out, _, err := dllm(t, append([]string{"plan", qwen, "--seq-len", "2048", "--batch-size", "1", "--device", "cuda", "--json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			TotalBytes int64 `json:"total_bytes"`
			Params     int64 `json:"params"`
		}
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if p.Params != 7615616512 {
			t.Errorf("Qwen2.5-7B has %d parameters, want 7615616512", p.Params)
		}
		return p.TotalBytes
	}
	full, rc := total(), total("--recompute")
	// fp32 weights, gradients and two moments of 7.6B parameters: > 113 GiB.
	if full < 113<<30 || rc >= full {
		t.Errorf("total %d bytes, with --recompute %d", full, rc)
	}
	out, _, err := dllm(t, "plan", filepath.Join(root, "testdata", "tiny", "qwen3"), "--seq-len", "64", "--batch-size", "2")
	if err != nil || !strings.Contains(out, "activations") || !strings.Contains(out, "total") {
		t.Errorf("plan of a model folder: %v\n%s", err, out)
	}
	if _, _, err := dllm(t, "plan", qwen, "--device", "tpu"); err == nil || !strings.Contains(err.Error(), "use cpu or cuda") {
		t.Errorf("--device tpu: %v", err)
	}
}
