package convert

import (
	"testing"

	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// TestExportConfigDType: the exported config names the dtype the weights
// were written in under every key a loader reads. transformers 5 reads
// "dtype" before "torch_dtype", so a source saved by it (bf16, "dtype") and
// exported in fp32 must not keep "dtype": "bfloat16", or dtype="auto" loads
// the fp32 weights in bf16.
func TestExportConfigDType(t *testing.T) {
	for _, c := range []struct {
		name    string
		raw     map[string]any
		dtype   bool // "dtype" in the export
		wantVoc int
	}{
		{"transformers 4", map[string]any{"model_type": "llama", "torch_dtype": "bfloat16", "vocab_size": 32.0}, false, 33},
		{"transformers 5", map[string]any{"model_type": "llama", "dtype": "bfloat16", "vocab_size": 32.0}, true, 33},
		{"both", map[string]any{"model_type": "llama", "dtype": "bfloat16", "torch_dtype": "bfloat16"}, true, 33},
	} {
		got := exportConfig(c.raw, c.wantVoc, safetensors.F32, model.DLLMInfo{MaskTokenID: 32})
		if got["torch_dtype"] != "float32" {
			t.Errorf("%s: torch_dtype %v, want float32", c.name, got["torch_dtype"])
		}
		if d, ok := got["dtype"]; ok != c.dtype || (ok && d != "float32") {
			t.Errorf("%s: dtype %v (present %v), want float32 only if the source had it", c.name, d, ok)
		}
		if got["vocab_size"] != c.wantVoc {
			t.Errorf("%s: vocab_size %v, want %d", c.name, got["vocab_size"], c.wantVoc)
		}
		if info, ok := got["dllm"].(model.DLLMInfo); !ok || info.MaskTokenID != 32 {
			t.Errorf("%s: dllm block %v", c.name, got["dllm"])
		}
		if c.raw["vocab_size"] == 33 || c.raw["torch_dtype"] == "float32" || c.raw["dtype"] == "float32" {
			t.Errorf("%s: the source's map was changed: %v", c.name, c.raw)
		}
	}
}
