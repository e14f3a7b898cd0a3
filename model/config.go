// Package model describes the decoder architectures dllm converts (llama,
// qwen2, qwen3, mistral; the mixture-of-experts qwen2_moe, qwen3_moe and
// mixtral, whose sparse FFN is SparseFFN in moe_engine.go): config.json, the checkpoint's tensor names and
// shapes, and the forward and backward passes written as kernel calls.
//
// The decoder is made of blocks (blocks.go): Embedding, Layer = Norm,
// Attention (Linear q/k/v/o), Norm, FFN (DenseFFN: Linear gate/up/down), and
// the final Norm and Linear head. Each block has a table of its tensors
// (Params: suffix, shape, views) and of its activations (Acts, Scratch); the
// tensor names, the parameter layout, the expected-tensor check and the
// activation arena (engine.go) are all computed from those tables.
//
// Plugging in:
//   - a new FFN type (MoE: router + experts): a type implementing FFN in its
//     own file, chosen in newFFN (blocks.go) from fields Config reads
//     (config.go); Params, Acts and Scratch make its tensors and buffers
//     known everywhere else.
//   - an adapter (LoRA): a type implementing Adapter, set on the Linear
//     blocks it wraps (Layer.Linears, Model.Head); Linear.Frozen drops the
//     base weight's gradient. Its own parameters live outside Model.Params.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// Supported lists the model_type values dllm understands.
var Supported = []string{"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe"}

// RopeScaling is config.json's rope_scaling for the types dllm implements.
type RopeScaling struct {
	Type                 string  // "llama3" or "linear"
	Factor               float64 // both
	LowFreqFactor        float64 // llama3
	HighFreqFactor       float64 // llama3
	OriginalMaxPositions int     // llama3: original_max_position_embeddings
}

// Config is the architecture of one checkpoint, read from config.json.
type Config struct {
	ModelType        string
	Hidden           int // hidden_size
	Intermediate     int // intermediate_size
	Layers           int // num_hidden_layers
	Heads            int // num_attention_heads
	KVHeads          int // num_key_value_heads
	HeadDim          int // head_dim (hidden/heads unless given)
	Vocab            int // vocab_size
	MaxPositions     int // max_position_embeddings
	RMSNormEps       float64
	RopeTheta        float64
	RopeScaling      *RopeScaling
	TieEmbeddings    bool // tie_word_embeddings
	QKVBias          bool // biases on q/k/v (qwen2; llama/mistral attention_bias)
	OBias            bool // bias on o_proj (llama/mistral attention_bias)
	QKNorm           bool // per-head RMSNorm on q and k (qwen3)
	SlidingWindow    int  // mistral/qwen sliding window, 0 = none; dllm attends over the whole row
	BOS              int  // bos_token_id, -1 if none
	EOS              []int
	Pad              int // pad_token_id, -1 if none
	TorchDType       string
	Raw              map[string]any             // the whole config.json, for writing it back (RawJSON)
	DLLM             *DLLMInfo                  // the "dllm" block of a converted checkpoint
	Path             string                     // the file it was read from
	ArchitectureName string                     // architectures[0]
	MoE              *MoE                       // the sparse FFN of qwen2_moe, qwen3_moe, mixtral; nil for dense models
	literal          map[string]json.RawMessage // config.json's values as written (RawJSON)
}

// DLLMInfo is the "dllm" object dllm adds to config.json of a diffusion
// checkpoint (DESIGN.md §4).
type DLLMInfo struct {
	MaskTokenID int     `json:"mask_token_id"`
	Shift       bool    `json:"shift"`
	Attention   string  `json:"attention"` // "bidirectional" or "block"
	BlockSize   int     `json:"block_size,omitempty"`
	Objective   string  `json:"objective"`
	Weighting   string  `json:"weighting"`
	Source      string  `json:"source_model"`
	Steps       int     `json:"steps"`
	TokensSeen  int64   `json:"tokens_seen"`
	CartP       float64 `json:"cart_p,omitempty"`
	TMin        float64 `json:"t_min,omitempty"`
	DocMask     bool    `json:"doc_mask,omitempty"`
}

// LoadConfig reads config.json from a model directory (or the file itself).
// Its errors are *DirError.
func LoadConfig(path string) (*Config, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &DirError{path, fmt.Sprintf("%s: no such folder or file: pass a Hugging Face model folder or its config.json", path), err}
	}
	dir := path
	if err == nil && st.IsDir() {
		path = filepath.Join(path, "config.json")
	}
	b, err := regfile.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, noConfig(dir, err)
	}
	if err != nil {
		return nil, &DirError{dir, fmt.Sprintf("cannot read model config %s: %v", path, unwrapPath(err)), err}
	}
	c, err := ParseConfig(b)
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	if errors.As(err, &syn) || errors.As(err, &typ) {
		return nil, &DirError{dir, fmt.Sprintf("%s: %v: a model's config.json is one JSON object (restore it from where the model came from)", path, err), err}
	}
	if err != nil {
		return nil, &DirError{dir, fmt.Sprintf("%s: %v", path, err), err}
	}
	c.Path = path
	return c, nil
}

// ParseConfig interprets the bytes of a config.json.
func ParseConfig(b []byte) (*Config, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	c := &Config{Raw: raw, BOS: -1, Pad: -1}
	json.Unmarshal(b, &c.literal)
	g := getter{raw: raw}
	c.ModelType = g.str("model_type")
	switch c.ModelType {
	case "llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe":
	case "":
		return nil, fmt.Errorf("config.json has no model_type; supported: %s", strings.Join(Supported, ", "))
	default:
		return nil, fmt.Errorf("model_type %q is not supported; supported: %s", c.ModelType, strings.Join(Supported, ", "))
	}
	if a, ok := raw["architectures"].([]any); ok && len(a) > 0 {
		c.ArchitectureName, _ = a[0].(string)
	}
	c.Hidden = g.int("hidden_size", 0)
	c.Intermediate = g.int("intermediate_size", 0)
	c.Layers = g.int("num_hidden_layers", 0)
	c.Heads = g.int("num_attention_heads", 0)
	c.KVHeads = g.int("num_key_value_heads", c.Heads)
	c.Vocab = g.int("vocab_size", 0)
	c.MaxPositions = g.int("max_position_embeddings", 0)
	c.RMSNormEps = g.float("rms_norm_eps", 1e-6)
	c.RopeTheta = g.float("rope_theta", 10000)
	c.TieEmbeddings = g.bool("tie_word_embeddings", false)
	c.TorchDType = g.str("torch_dtype")
	if c.TorchDType == "" {
		c.TorchDType = g.str("dtype")
	}
	if c.Heads > 0 {
		c.HeadDim = g.int("head_dim", c.Hidden/max(c.Heads, 1))
	}
	switch c.ModelType {
	case "qwen2":
		c.QKVBias = true
	case "qwen2_moe":
		c.QKVBias = g.bool("qkv_bias", true)
	case "qwen3", "qwen3_moe":
		c.QKNorm = true
		c.QKVBias = g.bool("attention_bias", false)
		c.OBias = c.QKVBias
	default:
		c.QKVBias = g.bool("attention_bias", false)
		c.OBias = c.QKVBias
	}
	if g.bool("mlp_bias", false) {
		return nil, fmt.Errorf("mlp_bias is true: biases on the MLP are not supported")
	}
	if act := g.str("hidden_act"); act != "" && act != "silu" {
		return nil, fmt.Errorf("hidden_act %q is not supported (only silu)", act)
	}
	if w := g.int("sliding_window", 0); w > 0 && (c.ModelType == "mistral" || c.ModelType == "mixtral" || g.bool("use_sliding_window", false)) {
		c.SlidingWindow = w
	}
	if v, ok := raw["bos_token_id"]; ok && v != nil {
		c.BOS = g.int("bos_token_id", -1)
	}
	if v, ok := raw["pad_token_id"]; ok && v != nil {
		c.Pad = g.int("pad_token_id", -1)
	}
	switch v := raw["eos_token_id"].(type) {
	case float64:
		c.EOS = []int{int(v)}
	case []any:
		for _, e := range v {
			if f, ok := e.(float64); ok {
				c.EOS = append(c.EOS, int(f))
			}
		}
	}
	// transformers 5 saves rope_theta and the scaling in rope_parameters (no
	// top-level rope_theta); like it, a non-null rope_scaling comes first.
	rs, _ := raw["rope_scaling"].(map[string]any)
	if rp, ok := raw["rope_parameters"].(map[string]any); ok && rs == nil {
		for _, k := range sortedKeys(rp) {
			if _, perLayer := rp[k].(map[string]any); perLayer {
				return nil, fmt.Errorf("rope_parameters per layer type (%q, ...) is not supported", k)
			}
		}
		rs = rp
	}
	if rs != nil {
		sg := getter{raw: rs}
		c.RopeTheta = sg.float("rope_theta", c.RopeTheta)
		t := sg.str("rope_type")
		if t == "" {
			t = sg.str("type")
		}
		switch t {
		case "llama3":
			c.RopeScaling = &RopeScaling{Type: t, Factor: sg.float("factor", 8), LowFreqFactor: sg.float("low_freq_factor", 1),
				HighFreqFactor: sg.float("high_freq_factor", 4), OriginalMaxPositions: sg.int("original_max_position_embeddings", 8192)}
		case "linear":
			c.RopeScaling = &RopeScaling{Type: t, Factor: sg.float("factor", 1)}
		case "default", "":
		default:
			return nil, fmt.Errorf("rope_scaling type %q is not supported (llama3, linear)", t)
		}
		if sg.err != nil {
			return nil, fmt.Errorf("rope: %w", sg.err)
		}
	}
	if d, ok := raw["dllm"]; ok && d != nil {
		js, _ := json.Marshal(d)
		var info DLLMInfo
		if err := json.Unmarshal(js, &info); err != nil {
			return nil, fmt.Errorf("the \"dllm\" block is malformed: %v", err)
		}
		c.DLLM = &info
	}
	c.MoE = parseMoE(c.ModelType, &g)
	if g.err != nil {
		return nil, g.err
	}
	return c, c.Validate()
}

// RawJSON is Raw for writing config.json: a value Raw still holds as read
// keeps its text from the file. encoding/json writes a float64 0.0 as 0, and
// transformers 5's configs refuse an int for a field declared float (e.g.
// Mixtral's router_jitter_noise: 0.0).
func (c *Config) RawJSON() map[string]any {
	out := make(map[string]any, len(c.Raw))
	for k, v := range c.Raw {
		out[k] = v
		if lit, ok := c.literal[k]; ok {
			var read any
			if json.Unmarshal(lit, &read) == nil && reflect.DeepEqual(read, v) {
				out[k] = lit
			}
		}
	}
	return out
}

// Validate checks that the sizes are usable.
func (c *Config) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"hidden_size", c.Hidden}, {"intermediate_size", c.Intermediate}, {"num_hidden_layers", c.Layers},
		{"num_attention_heads", c.Heads}, {"num_key_value_heads", c.KVHeads}, {"head_dim", c.HeadDim}, {"vocab_size", c.Vocab}} {
		if f.v <= 0 {
			return fmt.Errorf("%s must be a positive integer, got %d", f.name, f.v)
		}
	}
	if c.Heads%c.KVHeads != 0 {
		return fmt.Errorf("num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)", c.Heads, c.KVHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("head_dim %d must be even for rotary embeddings", c.HeadDim)
	}
	if !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0) {
		return fmt.Errorf("rope_theta must be a positive number, got %g", c.RopeTheta)
	}
	if !(c.RMSNormEps > 0) || math.IsInf(c.RMSNormEps, 0) {
		return fmt.Errorf("rms_norm_eps must be a positive number, got %g", c.RMSNormEps)
	}
	if c.MaxPositions < 0 {
		return fmt.Errorf("max_position_embeddings must be positive, got %d", c.MaxPositions)
	}
	// Sizes whose products overflow the engine's int32 indices, or whose
	// weights no machine holds, cannot be allocated.
	H, I, V, Q, KV, L := float64(c.Hidden), float64(c.Intermediate), float64(c.Vocab), float64(c.Heads*c.HeadDim), float64(c.KVHeads*c.HeadDim), float64(c.Layers)
	for _, m := range []struct {
		name string
		n    float64
	}{{"vocab_size x hidden_size", V * H}, {"intermediate_size x hidden_size", I * H}, {"heads x head_dim x hidden_size", Q * H}} {
		if m.n >= 1<<31 {
			return fmt.Errorf("%s = %.3g elements in one matrix cannot be allocated (at most 2^31)", m.name, m.n)
		}
	}
	if n := 2*V*H + L*(H*(2*Q+2*KV)+3*H*I); n > 1<<40 {
		return fmt.Errorf("the config describes %.3g parameters, more than can be allocated: check hidden_size, num_hidden_layers, vocab_size", n)
	}
	for _, t := range []struct {
		name string
		ids  []int
	}{{"bos_token_id", []int{c.BOS}}, {"pad_token_id", []int{c.Pad}}, {"eos_token_id", c.EOS}} {
		for _, id := range t.ids {
			if id >= c.Vocab || id < -1 || (id == -1 && t.name == "eos_token_id") {
				return fmt.Errorf("%s %d is outside the vocabulary (vocab_size %d)", t.name, id, c.Vocab)
			}
		}
	}
	if c.DLLM != nil && (c.DLLM.MaskTokenID < 0 || c.DLLM.MaskTokenID >= c.Vocab) {
		return fmt.Errorf("dllm.mask_token_id %d is outside the vocabulary (vocab_size %d)", c.DLLM.MaskTokenID, c.Vocab)
	}
	return c.MoE.validate()
}

// QDim is the width of the query projection (heads x head_dim).
func (c *Config) QDim() int { return c.Heads * c.HeadDim }

// KVDim is the width of the key and value projections.
func (c *Config) KVDim() int { return c.KVHeads * c.HeadDim }

// IsEOS reports whether id ends a sequence.
func (c *Config) IsEOS(id int) bool {
	for _, e := range c.EOS {
		if e == id {
			return true
		}
	}
	return false
}

type getter struct {
	raw map[string]any
	err error
}

func (g *getter) fail(key string, v any, want string) {
	if g.err == nil {
		g.err = fmt.Errorf("%s must be %s, got %v", key, want, v)
	}
}

func (g *getter) int(key string, def int) int {
	v, ok := g.raw[key]
	if !ok || v == nil {
		return def
	}
	f, ok := v.(float64)
	if !ok || f != float64(int(f)) {
		g.fail(key, v, "an integer")
		return def
	}
	return int(f)
}

func (g *getter) float(key string, def float64) float64 {
	v, ok := g.raw[key]
	if !ok || v == nil {
		return def
	}
	f, ok := v.(float64)
	if !ok {
		g.fail(key, v, "a number")
		return def
	}
	return f
}

func (g *getter) bool(key string, def bool) bool {
	v, ok := g.raw[key]
	if !ok || v == nil {
		return def
	}
	b, ok := v.(bool)
	if !ok {
		g.fail(key, v, "true or false")
		return def
	}
	return b
}

func (g *getter) str(key string) string {
	s, _ := g.raw[key].(string)
	return s
}

// sortedKeys is used where map order would make output unstable.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
