package convert

import (
	"encoding/json"
	"strings"
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
		got := exportConfig(&model.Config{Raw: c.raw}, c.wantVoc, safetensors.F32, model.DLLMInfo{MaskTokenID: 32})
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

// TestExportConfigRope: a source saved by transformers 5 has only
// rope_parameters; the export adds the rope_theta and rope_scaling that
// transformers 4 reads (5 reads rope_parameters first: unchanged for it).
func TestExportConfigRope(t *testing.T) {
	rp := map[string]any{"rope_theta": 5e5, "rope_type": "llama3", "factor": 32.0}
	got := exportConfig(&model.Config{Raw: map[string]any{"rope_parameters": rp}}, 10, safetensors.BF16, model.DLLMInfo{})
	// rope_theta at the top level only: transformers 4 warns of it in rope_scaling.
	rs, _ := got["rope_scaling"].(map[string]any)
	if got["rope_theta"] != 5e5 || rs == nil || rs["rope_type"] != "llama3" || rs["factor"] != 32.0 || rs["rope_theta"] != nil || len(rs) != 2 ||
		got["rope_parameters"] == nil || rp["rope_theta"] != 5e5 {
		t.Errorf("llama3 rope_parameters exported as %v (source's now %v)", got, rp)
	}
	got = exportConfig(&model.Config{Raw: map[string]any{"rope_parameters": map[string]any{"rope_theta": 1e6, "rope_type": "default"}}}, 10, safetensors.BF16, model.DLLMInfo{})
	if got["rope_theta"] != 1e6 || got["rope_scaling"] != nil {
		t.Errorf("default rope_parameters exported as %v", got)
	}
	// A config with both keeps its own.
	got = exportConfig(&model.Config{Raw: map[string]any{"rope_theta": 1e4, "rope_scaling": nil, "rope_parameters": rp}}, 10, safetensors.BF16, model.DLLMInfo{})
	if got["rope_theta"] != 1e4 {
		t.Errorf("top-level rope_theta replaced: %v", got["rope_theta"])
	}
	// Each export reads back as the source's RoPE.
	for _, raw := range []map[string]any{{"rope_parameters": rp}, {"rope_theta": 5e5, "rope_scaling": rp}} {
		cfg := exportConfig(&model.Config{Raw: raw}, 100, safetensors.BF16, model.DLLMInfo{})
		for k, v := range map[string]any{"model_type": "llama", "hidden_size": 64.0, "intermediate_size": 128.0, "num_hidden_layers": 2.0, "num_attention_heads": 4.0} {
			cfg[k] = v
		}
		b, _ := json.Marshal(cfg)
		c, err := model.ParseConfig(b)
		if err != nil || c.RopeTheta != 5e5 || c.RopeScaling == nil || c.RopeScaling.Factor != 32 {
			t.Errorf("%v read back: %+v, %v", raw, c, err)
		}
	}
}

// TestExportConfigLiterals: values the export does not change keep their
// text (0.0 stays 0.0: transformers 5 refuses 0 for a float field such as
// Mixtral's router_jitter_noise); the changed ones are the export's.
func TestExportConfigLiterals(t *testing.T) {
	src := `{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
	  "num_attention_heads": 4, "vocab_size": 100, "rms_norm_eps": 1e-05, "router_jitter_noise": 0.0,
	  "rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "torch_dtype": "bfloat16"}`
	c, err := model.ParseConfig([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(exportConfig(c, 101, safetensors.F32, model.DLLMInfo{MaskTokenID: 100}))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"router_jitter_noise":0.0`, `"rope_theta":10000.0`, `"factor":2.0`, `"rms_norm_eps":1e-05`,
		`"vocab_size":101`, `"torch_dtype":"float32"`, `"mask_token_id":100`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("export config lacks %s: %s", want, b)
		}
	}
	back, err := model.ParseConfig(b)
	if err != nil || back.Vocab != 101 || back.RopeTheta != 10000 || back.RopeScaling == nil || back.RopeScaling.Factor != 2 {
		t.Errorf("export config reads back as %+v, %v", back, err)
	}
}

// TestCardTransformersUse: the model card gives a transformers user the
// attention mask the model was trained for and the shift convention.
func TestCardTransformersUse(t *testing.T) {
	var bi, bl strings.Builder
	transformersUse(&bi, model.DLLMInfo{MaskTokenID: 512, Attention: "bidirectional"})
	transformersUse(&bl, model.DLLMInfo{MaskTokenID: 7, Attention: "block", BlockSize: 4, Shift: true})
	for _, want := range []string{"torch.zeros(1, 1, L, L, dtype=model.dtype)", "mask token (id 512)", "position i predict the token at i.", "applies a causal one"} {
		if !strings.Contains(bi.String(), want) {
			t.Errorf("bidirectional card lacks %q:\n%s", want, bi.String())
		}
	}
	for _, want := range []string{"(i[None, :] // 4) <= (i[:, None] // 4)", "block size 4", "mask token (id 7)", "predict the token at i + 1"} {
		if !strings.Contains(bl.String(), want) {
			t.Errorf("block card lacks %q:\n%s", want, bl.String())
		}
	}
	if strings.Contains(bi.String(), "//") || strings.Contains(bl.String(), "torch.zeros(1, 1, L, L") {
		t.Errorf("the two cards mix their masks")
	}
}
