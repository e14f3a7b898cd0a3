package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Real configs, trimmed: Llama 3.2 1B, a Llama 2 with linear RoPE scaling,
// Qwen2.5 0.5B, Qwen3 0.6B and Mistral 7B v0.1.
const (
	llama32Config = `{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
  "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": true, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "attention_bias": false, "mlp_bias": false, "hidden_act": "silu", "torch_dtype": "bfloat16"}`

	llamaLinearConfig = `{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
  "num_attention_heads": 8, "vocab_size": 32000, "max_position_embeddings": 8192,
  "rms_norm_eps": 1e-06, "rope_scaling": {"type": "linear", "factor": 4.0},
  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "attention_bias": true,
  "dtype": "float16"}`

	qwen25Config = `{
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936}`

	qwen3Config = `{
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
  "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}`

	mistralConfig = `{
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32000}`
)

func mustParse(t *testing.T, js string) *Config {
	t.Helper()
	c, err := ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if c.Raw == nil {
		t.Error("Raw not kept")
	}
	// Raw, its literals and Path are not compared below.
	c.Raw, c.literal = nil, nil
	return c
}

// TestRawJSON: what Raw holds as read is written with config.json's text
// (0.0 stays 0.0, 1e-05 and nested values too); a changed value is written
// anew, an added one too.
func TestRawJSON(t *testing.T) {
	c, err := ParseConfig([]byte(`{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
	  "num_attention_heads": 4, "vocab_size": 100, "rms_norm_eps": 1e-05, "router_jitter_noise": 0.0,
	  "rope_scaling": {"rope_type": "linear", "factor": 2.0}}`))
	if err != nil {
		t.Fatal(err)
	}
	c.Raw["vocab_size"] = 101
	c.Raw["added"] = 3.0
	b, _ := json.Marshal(c.RawJSON())
	for _, want := range []string{`"router_jitter_noise":0.0`, `"rms_norm_eps":1e-05`, `"factor":2.0`, `"vocab_size":101`, `"added":3`, `"hidden_size":64`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("RawJSON lacks %s: %s", want, b)
		}
	}
	if raw, _ := json.Marshal(c.Raw); strings.Contains(string(raw), `"router_jitter_noise":0.0`) {
		t.Errorf("encoding/json kept 0.0 without RawJSON (the test shows nothing): %s", raw)
	}
}

func TestParseConfigs(t *testing.T) {
	for _, c := range []struct {
		name   string
		js     string
		want   Config
		params int64 // published parameter counts
	}{
		{"llama3.2-1b", llama32Config, Config{
			ModelType: "llama", ArchitectureName: "LlamaForCausalLM", Hidden: 2048, Intermediate: 8192, Layers: 16,
			Heads: 32, KVHeads: 8, HeadDim: 64, Vocab: 128256, MaxPositions: 131072, RMSNormEps: 1e-5,
			RopeTheta: 500000, TieEmbeddings: true, BOS: 128000, EOS: []int{128001, 128008, 128009}, Pad: -1,
			TorchDType: "bfloat16",
			RopeScaling: &RopeScaling{Type: "llama3", Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4,
				OriginalMaxPositions: 8192},
		}, 1_235_814_400},
		{"llama-linear", llamaLinearConfig, Config{
			ModelType: "llama", ArchitectureName: "LlamaForCausalLM", Hidden: 512, Intermediate: 1376, Layers: 4,
			Heads: 8, KVHeads: 8, HeadDim: 64, Vocab: 32000, MaxPositions: 8192, RMSNormEps: 1e-6,
			RopeTheta: 10000, BOS: 1, EOS: []int{2}, Pad: 0, TorchDType: "float16", QKVBias: true, OBias: true,
			RopeScaling: &RopeScaling{Type: "linear", Factor: 4},
		}, 0},
		{"qwen2.5-0.5b", qwen25Config, Config{
			ModelType: "qwen2", ArchitectureName: "Qwen2ForCausalLM", Hidden: 896, Intermediate: 4864, Layers: 24,
			Heads: 14, KVHeads: 2, HeadDim: 64, Vocab: 151936, MaxPositions: 32768, RMSNormEps: 1e-6,
			RopeTheta: 1e6, TieEmbeddings: true, QKVBias: true, BOS: 151643, EOS: []int{151643}, Pad: -1,
			TorchDType: "bfloat16",
		}, 494_032_768},
		{"qwen3-0.6b", qwen3Config, Config{
			ModelType: "qwen3", ArchitectureName: "Qwen3ForCausalLM", Hidden: 1024, Intermediate: 3072, Layers: 28,
			Heads: 16, KVHeads: 8, HeadDim: 128, Vocab: 151936, MaxPositions: 40960, RMSNormEps: 1e-6,
			RopeTheta: 1e6, TieEmbeddings: true, QKNorm: true, BOS: 151643, EOS: []int{151645}, Pad: -1,
			TorchDType: "bfloat16",
		}, 596_049_920},
		{"mistral-7b", mistralConfig, Config{
			ModelType: "mistral", ArchitectureName: "MistralForCausalLM", Hidden: 4096, Intermediate: 14336, Layers: 32,
			Heads: 32, KVHeads: 8, HeadDim: 128, Vocab: 32000, MaxPositions: 32768, RMSNormEps: 1e-5,
			RopeTheta: 10000, SlidingWindow: 4096, BOS: 1, EOS: []int{2}, Pad: -1, TorchDType: "bfloat16",
		}, 7_241_732_096},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := mustParse(t, c.js)
			if !reflect.DeepEqual(*got, c.want) {
				t.Errorf("got  %+v\nwant %+v", *got, c.want)
				if got.RopeScaling != nil && c.want.RopeScaling != nil {
					t.Errorf("rope scaling %+v, want %+v", *got.RopeScaling, *c.want.RopeScaling)
				}
			}
			if c.params != 0 && got.ParamCount() != c.params {
				t.Errorf("%d parameters, published %d", got.ParamCount(), c.params)
			}
		})
	}
}

func TestConfigHelpers(t *testing.T) {
	q := mustParse(t, qwen3Config)
	// Qwen3's head_dim is not hidden/heads: the projections are wider than hidden.
	if q.QDim() != 2048 || q.KVDim() != 1024 || q.Hidden/q.Heads == q.HeadDim {
		t.Errorf("qdim %d kvdim %d", q.QDim(), q.KVDim())
	}
	l := mustParse(t, llama32Config)
	for id, want := range map[int]bool{128001: true, 128009: true, 128000: false, 2: false} {
		if l.IsEOS(id) != want {
			t.Errorf("IsEOS(%d) = %v", id, !want)
		}
	}
}

func TestParseConfigDLLMBlock(t *testing.T) {
	js := strings.TrimSuffix(mistralConfig, "}") + `, "dllm": {"mask_token_id": 31999, "shift": true,
	  "attention": "block", "block_size": 32, "objective": "mdm", "weighting": "cart", "source_model": "m",
	  "steps": 10, "tokens_seen": 12345, "cart_p": 0.1}}`
	c := mustParse(t, js)
	want := DLLMInfo{MaskTokenID: 31999, Shift: true, Attention: "block", BlockSize: 32, Objective: "mdm",
		Weighting: "cart", Source: "m", Steps: 10, TokensSeen: 12345, CartP: 0.1}
	if c.DLLM == nil || !reflect.DeepEqual(*c.DLLM, want) {
		t.Errorf("dllm block %+v", c.DLLM)
	}
	if _, err := ParseConfig([]byte(strings.TrimSuffix(mistralConfig, "}") + `, "dllm": {"steps": "x"}}`)); err == nil {
		t.Error("malformed dllm block accepted")
	}
}

func TestParseConfigErrors(t *testing.T) {
	base := `"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100`
	for _, c := range []struct{ js, want string }{
		{`{"model_type": "gpt2", ` + base + `}`, `model_type "gpt2" is not supported; supported: llama, mistral, qwen2, qwen3`},
		{`{"model_type": "gemma", ` + base + `}`, "supported: llama, mistral, qwen2, qwen3"},
		{`{` + base + `}`, "no model_type; supported: llama, mistral, qwen2, qwen3"},
		{`{"model_type": "llama", `, "not valid JSON"},
		{`[]`, "not valid JSON"},
		{`null`, "no model_type"},
		{`{"model_type": "llama", ` + base + `, "hidden_act": "gelu"}`, `hidden_act "gelu"`},
		{`{"model_type": "llama", ` + base + `, "mlp_bias": true}`, "mlp_bias"},
		{`{"model_type": "llama", ` + base + `, "num_key_value_heads": 3}`, "not a multiple"},
		{`{"model_type": "llama", ` + base + `, "head_dim": 15}`, "even"},
		{`{"model_type": "llama", ` + base + `, "rope_scaling": {"rope_type": "yarn", "factor": 4}}`, `"yarn" is not supported`},
		{`{"model_type": "llama", "hidden_size": "64", "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}`, "hidden_size must be an integer"},
		{`{"model_type": "llama", ` + base + `, "num_hidden_layers": 2.5}`, "num_hidden_layers must be an integer"},
		{`{"model_type": "llama", ` + base + `, "tie_word_embeddings": "yes"}`, "tie_word_embeddings must be true or false"},
		{`{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100}`, "num_attention_heads must be a positive integer"},
		{`{"model_type": "llama", ` + base + `, "vocab_size": 0}`, "vocab_size must be a positive integer"},
		// Values checked before use: ids against the vocabulary, rope and
		// norm constants, sizes that cannot be allocated.
		{`{"model_type": "llama", ` + base + `, "eos_token_id": 100}`, "eos_token_id 100 is outside the vocabulary (vocab_size 100)"},
		{`{"model_type": "llama", ` + base + `, "eos_token_id": [2, 5000]}`, "eos_token_id 5000 is outside"},
		{`{"model_type": "llama", ` + base + `, "bos_token_id": 123456}`, "bos_token_id 123456 is outside"},
		{`{"model_type": "llama", ` + base + `, "pad_token_id": -7}`, "pad_token_id -7 is outside"},
		{`{"model_type": "llama", ` + base + `, "dllm": {"mask_token_id": 100}}`, "dllm.mask_token_id 100 is outside"},
		{`{"model_type": "llama", ` + base + `, "rope_theta": 0}`, "rope_theta must be a positive number, got 0"},
		{`{"model_type": "llama", ` + base + `, "rope_theta": -10000}`, "rope_theta must be a positive number"},
		{`{"model_type": "llama", ` + base + `, "rms_norm_eps": 0}`, "rms_norm_eps must be a positive number"},
		{`{"model_type": "llama", ` + base + `, "rms_norm_eps": -1e-6}`, "rms_norm_eps must be a positive number"},
		{`{"model_type": "llama", ` + base + `, "hidden_size": 1048576, "vocab_size": 1048576}`, "cannot be allocated"},
		{`{"model_type": "llama", ` + base + `, "hidden_size": 16384, "intermediate_size": 65536, "num_hidden_layers": 100000}`, "more than can be allocated"},
	} {
		_, err := ParseConfig([]byte(c.js))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n error %v, want %q", c.js, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("multi-line error %q", err)
		}
	}
	// A sliding window that is switched off is ignored; rope_scaling
	// "default" is none.
	c := mustParse(t, `{"model_type": "qwen2", `+base+`, "sliding_window": 4096, "use_sliding_window": false, "rope_scaling": {"rope_type": "default"}}`)
	if c.SlidingWindow != 0 || c.RopeScaling != nil {
		t.Errorf("window %d scaling %+v", c.SlidingWindow, c.RopeScaling)
	}
}

// TestParseConfigRopeParameters: transformers 5 saves rope_theta and the
// scaling in rope_parameters, with no top-level rope_theta; read as the
// default 10000, a Qwen's 1e6 would be silently wrong.
func TestParseConfigRopeParameters(t *testing.T) {
	base := `"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100`
	c := mustParse(t, `{`+base+`, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}`)
	if c.RopeTheta != 1e6 || c.RopeScaling != nil {
		t.Errorf("default rope_parameters: theta %g, scaling %+v", c.RopeTheta, c.RopeScaling)
	}
	c = mustParse(t, `{`+base+`, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0,
	  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}`)
	want := RopeScaling{Type: "llama3", Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 8192}
	if c.RopeTheta != 5e5 || c.RopeScaling == nil || *c.RopeScaling != want {
		t.Errorf("llama3 rope_parameters: theta %g, scaling %+v", c.RopeTheta, c.RopeScaling)
	}
	// A non-null rope_scaling comes first, as in transformers 5; the top-level theta stays.
	c = mustParse(t, `{`+base+`, "rope_theta": 20000, "rope_scaling": {"rope_type": "linear", "factor": 2},
	  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}`)
	if c.RopeTheta != 20000 || c.RopeScaling == nil || c.RopeScaling.Type != "linear" {
		t.Errorf("rope_scaling and rope_parameters: theta %g, scaling %+v", c.RopeTheta, c.RopeScaling)
	}
	for _, e := range []struct{ js, want string }{
		{`"rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}`,
			`rope_parameters per layer type ("full_attention", ...) is not supported`},
		{`"rope_parameters": {"rope_theta": "1e6"}`, "rope: rope_theta must be a number"},
		{`"rope_parameters": {"rope_theta": 0}`, "rope_theta must be a positive number"},
		{`"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4}`, `"yarn" is not supported`},
		{`"rope_scaling": {"rope_type": "linear", "factor": "2"}`, "rope: factor must be a number"},
	} {
		if _, err := ParseConfig([]byte(`{` + base + `, ` + e.js + `}`)); err == nil || !strings.Contains(err.Error(), e.want) {
			t.Errorf("%s:\n error %v, want %q", e.js, err, e.want)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadConfig(dir); err == nil || err.Error() != dir+" has no config.json: is it a model folder? (a Hugging Face model folder holds config.json and *.safetensors)" {
		t.Errorf("missing config.json: %v", err)
	}
	p := filepath.Join(dir, "config.json")
	if err := os.WriteFile(p, []byte(`{"model_type": "bert"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(dir); err == nil || !strings.HasPrefix(err.Error(), p+": ") {
		t.Errorf("error should start with the file: %v", err)
	}
	if err := os.WriteFile(p, []byte(mistralConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{dir, p} {
		c, err := LoadConfig(arg)
		if err != nil || c.Path != p || c.ModelType != "mistral" {
			t.Errorf("LoadConfig(%s) = %+v, %v", arg, c, err)
		}
	}
}

// TestCheckGenerationConfig: token ids in generation_config.json outside the
// vocabulary are refused; a folder without the file passes.
func TestCheckGenerationConfig(t *testing.T) {
	dir := t.TempDir()
	if err := CheckGenerationConfig(dir, 100); err != nil {
		t.Fatal(err)
	}
	for js, want := range map[string]string{
		`{"eos_token_id": 100}`:                       "eos_token_id 100 is outside",
		`{"eos_token_id": [1, -1]}`:                   "eos_token_id -1 is outside",
		`{"bos_token_id": 1.5}`:                       "bos_token_id 1.5 is outside",
		`{"pad_token_id": 99, "mask_token_id": 4000}`: "mask_token_id 4000",
		`{"eos_token_id": [1, 2], "pad_token_id": 0}`: "",
	} {
		os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(js), 0o644)
		err := CheckGenerationConfig(dir, 100)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v, want %q", js, err, want)
		}
	}
}
