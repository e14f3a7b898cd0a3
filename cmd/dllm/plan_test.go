package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/model"
)

// planJSON runs dllm plan ARGS --json and decodes its plan.
func planJSON(t *testing.T, args ...string) model.Plan {
	t.Helper()
	stdout, stderr, err := dllm(t, append(append([]string{"plan"}, args...), "--json")...)
	if err != nil {
		t.Fatalf("plan %v: %v\n%s", args, err, stderr)
	}
	var p model.Plan
	if err := json.Unmarshal([]byte(stdout), &p); err != nil {
		t.Fatalf("plan %v: %v: %s", args, err, stdout)
	}
	return p
}

// TestPlanCommand: dllm plan on a bare config.json and on a model folder;
// --json has total_bytes; --recompute plans less; bad flags are one line.
func TestPlanCommand(t *testing.T) {
	root := moduleRoot(t)
	qwen := filepath.Join(root, "testdata", "configs", "qwen2.5-7b.json")
	total := func(args ...string) int64 {
		p := planJSON(t, append([]string{qwen, "--seq-len", "2048", "--batch-size", "1", "--device", "cuda"}, args...)...)
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

// TestPlanBF16Copies: dllm plan --bf16-copies: on and auto count the
// copies (auto also prints the total convert falls back to), off counts
// none and says so; the JSON totals differ by the copies less the per-call
// casts' workspace (13.17 GiB and 1.17 GiB for Qwen2.5-7B at 2048 tokens).
func TestPlanBF16Copies(t *testing.T) {
	qwen := filepath.Join(moduleRoot(t), "testdata", "configs", "qwen2.5-7b.json")
	args := []string{"plan", qwen, "--seq-len", "2048", "--batch-size", "1", "--device", "cuda", "--recompute"}
	type planJSON struct {
		TotalBytes     int64 `json:"total_bytes"`
		CopyBytes      int64 `json:"bf16_copy_bytes"`
		WorkspaceBytes int64 `json:"workspace_bytes"`
	}
	plan := func(extra ...string) (p planJSON, text string) {
		a := append(append([]string{}, args...), extra...)
		text, _, err := dllm(t, a...)
		if err != nil {
			t.Fatal(err)
		}
		js, _, err := dllm(t, append(a, "--json")...)
		if err == nil {
			err = json.Unmarshal([]byte(js), &p)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p, text
	}
	on, onText := plan("--bf16-copies", "on")
	auto, autoText := plan()
	off, offText := plan("--bf16-copies", "off")
	if on.TotalBytes != auto.TotalBytes || on.CopyBytes == 0 || off.CopyBytes != 0 {
		t.Errorf("totals on %d, auto %d, off %d; copies %d and %d", on.TotalBytes, auto.TotalBytes, off.TotalBytes, on.CopyBytes, off.CopyBytes)
	}
	if on.TotalBytes-off.TotalBytes != on.CopyBytes-(off.WorkspaceBytes-on.WorkspaceBytes) {
		t.Errorf("on - off = %d, copies %d less workspace %d", on.TotalBytes-off.TotalBytes, on.CopyBytes, off.WorkspaceBytes-on.WorkspaceBytes)
	}
	if !strings.Contains(onText, "bf16 copies of the weights the matmuls read") || !strings.Contains(offText, "no bf16 copies of the weights") ||
		!strings.Contains(autoText, "--bf16-copies auto: below 130.81 GiB free on the device the run drops the copies and needs 118.82 GiB") || strings.Contains(onText, "--bf16-copies auto") {
		t.Errorf("the rows do not say which:\non:\n%s\nauto:\n%s\noff:\n%s", onText, autoText, offText)
	}
	if _, _, err := dllm(t, append(args, "--bf16-copies", "sometimes")...); err == nil || !strings.Contains(err.Error(), "use auto, on or off") {
		t.Errorf("plan --bf16-copies sometimes: %v", err)
	}
	tiny := filepath.Join(moduleRoot(t), "testdata", "tiny", "llama", "config.json")
	// Refused before the weights are read: the folder need not exist.
	if _, _, err := dllm(t, "bench", "--model", filepath.Join(t.TempDir(), "none"), "--device", "cpu", "--threads", "1", "--bf16-copies", "sometimes"); err == nil ||
		!strings.Contains(err.Error(), "use auto, on or off") || exitCode(err) != 2 {
		t.Errorf("bench --bf16-copies sometimes: %v (exit %d), want exit 2", err, exitCode(err))
	}
	if out, _, err := dllm(t, "bench", "--arch", tiny, "--device", "cpu", "--threads", "1", "--batch", "1", "--seq-len", "16", "--steps", "1", "--warmup", "0", "--bf16-copies", "off"); err != nil || !strings.Contains(out, "tokens/s") {
		t.Errorf("bench --bf16-copies off on the CPU: %v\n%s", err, out)
	}
}
