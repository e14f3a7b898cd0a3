package main

import (
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdapterFlag: a LoRA conversion's PEFT adapter, merged into the source
// on load by --adapter, evaluates and samples as the merged final/ does.
func TestAdapterFlag(t *testing.T) {
	out, data := convertTiny(t, "--lora-rank", "4", "--lora-alpha", "8", "--lr", "0.01")
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	evalArgs := []string{"--data", data, "--mode", "diffusion", "--eval-fraction", "0.2", "--rows", "6", "--batch-size", "4",
		"--seq-len", "32", "--mc", "3", "--seed", "9", "--threads", "2", "--json"}
	nelbo := func(args ...string) float64 {
		stdout, stderr, err := dllm(t, append(append([]string{"eval"}, args...), evalArgs...)...)
		if err != nil {
			t.Fatalf("eval %v: %v\n%s", args, err, stderr)
		}
		var ev struct{ NELBO float64 }
		if err := json.Unmarshal([]byte(stdout), &ev); err != nil {
			t.Fatal(err)
		}
		return ev.NELBO
	}
	merged := nelbo(filepath.Join(out, "final"))
	adapted := nelbo(src, "--adapter", filepath.Join(out, "final", "adapter"))
	if merged == 0 || math.Abs(merged-adapted) > 1e-5*merged {
		t.Fatalf("NELBO of final/ %v, of the source with --adapter %v", merged, adapted)
	}
	gen := func(args ...string) string {
		stdout, stderr, err := dllm(t, append(append([]string{"generate"}, args...), "--prompt", "Once upon", "--gen-len", "12",
			"--steps", "12", "--json", "--threads", "2")...)
		if err != nil {
			t.Fatalf("generate %v: %v\n%s", args, err, stderr)
		}
		var res struct{ Samples []struct{ IDs []int } }
		json.Unmarshal([]byte(stdout), &res)
		b, _ := json.Marshal(res.Samples)
		return string(b)
	}
	if a, b := gen(filepath.Join(out, "final")), gen(src, "--adapter", filepath.Join(out, "final", "adapter")); a != b {
		t.Fatalf("greedy samples differ: final/ %s, --adapter %s", a, b)
	}
	_, _, err := dllm(t, "eval", src, "--adapter", t.TempDir(), "--data", data)
	if err == nil || !strings.Contains(err.Error(), "adapter_config.json") {
		t.Fatalf("--adapter on an empty folder: %v", err)
	}
}
