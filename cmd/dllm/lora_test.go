package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// adapterNELBO is eval's diffusion NELBO of ARGS on data's held-out rows,
// the setting the adapter tests compare final/ and --adapter in.
func adapterNELBO(t *testing.T, data string, args ...string) float64 {
	t.Helper()
	stdout, stderr, err := dllm(t, append(append([]string{"eval"}, args...), "--data", data, "--mode", "diffusion", "--eval-fraction", "0.2",
		"--rows", "6", "--batch-size", "4", "--seq-len", "32", "--mc", "3", "--seed", "9", "--threads", "2", "--json")...)
	if err != nil {
		t.Fatalf("eval %v: %v\n%s", args, err, stderr)
	}
	var ev struct{ NELBO float64 }
	if err := json.Unmarshal([]byte(stdout), &ev); err != nil {
		t.Fatal(err)
	}
	return ev.NELBO
}

// TestAdapterFlag: a LoRA conversion's PEFT adapter, merged into the source
// on load by --adapter, evaluates and samples as the merged final/ does.
func TestAdapterFlag(t *testing.T) {
	out, data := convertTiny(t, "--lora-rank", "4", "--lora-alpha", "8", "--lr", "0.01")
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	merged := adapterNELBO(t, data, filepath.Join(out, "final"))
	adapted := adapterNELBO(t, data, src, "--adapter", filepath.Join(out, "final", "adapter"))
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

// TestPlanLoRA: the plan of Qwen2.5-7B at 2048 tokens on CUDA with
// --recompute is under 40 GiB with LoRA rank 16 (40,370,176 adapter values,
// PEFT's count for this model, plus the mask row) and over 100 GB with full
// fine-tuning.
func TestPlanLoRA(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(`{"model_type":"qwen2","hidden_size":3584,"num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"intermediate_size":18944,"vocab_size":152064,"rms_norm_eps":1e-6,"rope_theta":1000000,"tie_word_embeddings":false,"max_position_embeddings":32768}`), 0o644)
	total := func(extra ...string) (float64, int64) {
		p := planJSON(t, append([]string{cfg, "--seq-len", "2048", "--batch-size", "1", "--device", "cuda", "--recompute"}, extra...)...)
		return float64(p.TotalBytes), p.Trainable
	}
	lora, trained := total("--lora-rank", "16")
	full, _ := total()
	fp32, _ := total("--lora-rank", "16", "--matmul", "fp32")
	if !(lora < 40e9) || !(full > 100e9) || trained != 40370176+3584 {
		t.Fatalf("LoRA r16 %.2f GiB (%d trained), full fine-tuning %.2f GiB", lora/(1<<30), trained, full/(1<<30))
	}
	// With fp32 matmuls the base stays fp32: 7.6B x 4 bytes more than 2.
	if fp32-lora < 13e9 {
		t.Errorf("LoRA r16 with fp32 matmuls %.2f GiB, with bf16 %.2f GiB", fp32/(1<<30), lora/(1<<30))
	}
}
