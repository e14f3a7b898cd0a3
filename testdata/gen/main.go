// Command gen writes the tiny random checkpoints under testdata/tiny that
// tests use in place of real models: Hugging Face layout (config.json,
// model.safetensors or shards with an index, tokenizer.json,
// tokenizer_config.json), a few hundred KB in all, identical on every run.
//
//	go run ./testdata/gen            # from the module root: rewrites testdata/tiny
//	go run ./testdata/gen -out DIR   # somewhere else
//
// model's tests regenerate into a temporary folder and compare bytes, so the
// committed files never drift from this program.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// checkpoint is one tiny model.
type checkpoint struct {
	name   string
	config map[string]any // config.json
	dtype  safetensors.DType
	shards int // 0: one model.safetensors
	seed   string
}

// seed is the fixed seed of every weight.
const seed = 20240601

// vocabSize leaves a few spare embedding rows above the tokenizer's
// tokens, as Qwen checkpoints do; the mask token can take one.
const vocabSize = 384

func checkpoints() []checkpoint {
	common := func(arch, typ string, hidden, inter int, tied bool) map[string]any {
		return map[string]any{
			"architectures":           []string{arch},
			"model_type":              typ,
			"hidden_size":             hidden,
			"intermediate_size":       inter,
			"num_hidden_layers":       2,
			"num_attention_heads":     4,
			"num_key_value_heads":     2,
			"vocab_size":              vocabSize,
			"max_position_embeddings": 256,
			"rms_norm_eps":            1e-5,
			"rope_theta":              10000.0,
			"rope_scaling":            nil,
			"hidden_act":              "silu",
			"attention_bias":          false,
			"attention_dropout":       0.0,
			"initializer_range":       0.02,
			"tie_word_embeddings":     tied,
			"bos_token_id":            1,
			"eos_token_id":            2,
			"use_cache":               true,
		}
	}
	llama := common("LlamaForCausalLM", "llama", 32, 96, true)
	llama["mlp_bias"] = false
	llama["torch_dtype"] = "float32"

	sharded := common("LlamaForCausalLM", "llama", 32, 96, false)
	sharded["mlp_bias"] = false
	sharded["torch_dtype"] = "bfloat16"

	qwen2 := common("Qwen2ForCausalLM", "qwen2", 48, 144, false)
	delete(qwen2, "attention_bias") // Qwen2 always has q/k/v biases
	qwen2["rope_theta"] = 1000000.0
	qwen2["rms_norm_eps"] = 1e-6
	qwen2["sliding_window"] = 256
	qwen2["use_sliding_window"] = false
	qwen2["max_window_layers"] = 2
	qwen2["torch_dtype"] = "bfloat16"

	qwen3 := common("Qwen3ForCausalLM", "qwen3", 32, 96, true)
	qwen3["head_dim"] = 16 // hidden/heads is 8
	qwen3["rope_theta"] = 1000000.0
	qwen3["rms_norm_eps"] = 1e-6
	qwen3["sliding_window"] = nil
	qwen3["use_sliding_window"] = false
	qwen3["max_window_layers"] = 2
	qwen3["torch_dtype"] = "bfloat16"

	qwen2moe := common("Qwen2MoeForCausalLM", "qwen2_moe", 32, 96, false)
	delete(qwen2moe, "attention_bias")
	for k, v := range map[string]any{"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "num_experts": 4,
		"num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
		"norm_topk_prob": false, "decoder_sparse_step": 1, "mlp_only_layers": []int{0}, "router_aux_loss_coef": 0.001,
		"output_router_logits": false, "sliding_window": 256, "use_sliding_window": false, "max_window_layers": 2,
		"torch_dtype": "bfloat16"} {
		qwen2moe[k] = v
	}

	qwen3moe := common("Qwen3MoeForCausalLM", "qwen3_moe", 32, 96, true)
	for k, v := range map[string]any{"head_dim": 16, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "num_experts": 8,
		"num_experts_per_tok": 2, "moe_intermediate_size": 24, "norm_topk_prob": true, "decoder_sparse_step": 1,
		"mlp_only_layers": []int{}, "router_aux_loss_coef": 0.001, "output_router_logits": false,
		"sliding_window": nil, "use_sliding_window": false, "max_window_layers": 2, "torch_dtype": "bfloat16"} {
		qwen3moe[k] = v
	}

	mixtral := common("MixtralForCausalLM", "mixtral", 32, 48, false)
	for k, v := range map[string]any{"num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
		"router_jitter_noise": 0.0, "output_router_logits": false, "sliding_window": nil, "rope_theta": 1000000.0,
		"torch_dtype": "bfloat16"} {
		mixtral[k] = v
	}

	return []checkpoint{
		{name: "llama", config: llama, dtype: safetensors.F32, seed: "llama"},
		{name: "llama-sharded", config: sharded, dtype: safetensors.BF16, shards: 3, seed: "llama"},
		{name: "qwen2", config: qwen2, dtype: safetensors.BF16, seed: "qwen2"},
		{name: "qwen3", config: qwen3, dtype: safetensors.BF16, seed: "qwen3"},
		{name: "qwen2_moe", config: qwen2moe, dtype: safetensors.BF16, seed: "qwen2-moe"},
		{name: "qwen3_moe", config: qwen3moe, dtype: safetensors.BF16, seed: "qwen3_moe"},
		{name: "mixtral", config: mixtral, dtype: safetensors.BF16, seed: "mixtral"},
	}
}

func main() {
	out := flag.String("out", "", "output folder (default testdata/tiny under the module root, which must be the working directory)")
	flag.Parse()
	if *out == "" {
		if _, err := os.Stat("go.mod"); err != nil {
			fmt.Fprintln(os.Stderr, "gen: run from the module root (go run ./testdata/gen) or pass -out DIR")
			os.Exit(2)
		}
		*out = filepath.Join("testdata", "tiny")
	}
	if err := generate(*out); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}

func generate(out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	tokJSON, err := tokenizerJSON()
	if err != nil {
		return err
	}
	var readme strings.Builder
	readme.WriteString(readmeHead)
	for _, ck := range checkpoints() {
		dir := filepath.Join(out, ck.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		cfgJSON, err := marshal(ck.config, "  ")
		if err != nil {
			return err
		}
		cfg, err := model.ParseConfig(cfgJSON)
		if err != nil {
			return fmt.Errorf("%s: %v", ck.name, err)
		}
		for name, data := range map[string][]byte{
			"config.json":           cfgJSON,
			"tokenizer.json":        tokJSON,
			"tokenizer_config.json": tokenizerConfig(cfg.MaxPositions),
		} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				return err
			}
		}
		files, err := writeWeights(dir, ck, cfg)
		if err != nil {
			return fmt.Errorf("%s: %v", ck.name, err)
		}
		fmt.Fprintf(&readme, "| `%s` | %s | %d | %d / %d | %d | %s | %s | %d |\n", ck.name, cfg.ModelType, cfg.Hidden,
			cfg.Heads, cfg.KVHeads, cfg.HeadDim, tiedText(cfg), ck.dtype, files)
	}
	readme.WriteString(readmeTail)
	return os.WriteFile(filepath.Join(out, "README.md"), []byte(readme.String()), 0o644)
}

func tiedText(c *model.Config) string {
	if c.TieEmbeddings {
		return "tied"
	}
	return "untied"
}

// writeWeights writes every tensor the config expects, drawn from a
// stream seeded by the checkpoint family and the tensor name (so the
// sharded llama holds the same weights as the plain one, plus its lm_head).
func writeWeights(dir string, ck checkpoint, cfg *model.Config) (int, error) {
	var specs []safetensors.Spec
	var total int64
	for _, t := range cfg.Tensors() {
		shape := make([]int64, len(t.Shape))
		for i, d := range t.Shape {
			shape[i] = int64(d)
		}
		specs = append(specs, safetensors.Spec{Name: t.Name, Shape: shape})
		total += int64(t.Elements()) * int64(ck.dtype.Bits()/8)
	}
	opt := safetensors.WriteOptions{DType: ck.dtype, Overwrite: true}
	if ck.shards > 0 {
		opt.MaxShardSize = shardLimit(specs, int64(ck.dtype.Bits()/8), total, ck.shards)
		if opt.MaxShardSize == 0 {
			return 0, fmt.Errorf("cannot split into %d shards", ck.shards)
		}
	}
	files, err := safetensors.Write(dir, specs, func(name string, dst []float32) error {
		fill(dst, ck.seed, name)
		return nil
	}, opt)
	if err != nil {
		return 0, err
	}
	shards := len(files)
	if ck.shards > 0 {
		shards-- // the index
	}
	if want := max(ck.shards, 1); shards != want {
		return 0, fmt.Errorf("wrote %d weight files, want %d", shards, want)
	}
	return shards, nil
}

// shardLimit is the smallest shard size at which the writer's greedy split
// (tensors in name order, a new shard when the next would not fit) gives n
// shards.
func shardLimit(specs []safetensors.Spec, esize, total int64, n int) int64 {
	sorted := append([]safetensors.Spec(nil), specs...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].Name < sorted[b].Name })
	for limit := (total + int64(n) - 1) / int64(n); limit <= total; limit += 64 {
		count, cur := 1, int64(0)
		for _, s := range sorted {
			b := esize
			for _, d := range s.Shape {
				b *= d
			}
			if cur > 0 && cur+b > limit {
				count, cur = count+1, 0
			}
			cur += b
		}
		if count == n {
			return limit
		}
	}
	return 0
}

// fill draws a tensor: norms are 1 + N(0, 0.02^2)-ish, everything else
// (weights and biases) N(0, 0.02^2)-ish. The normal is the sum of 12
// uniforms (Irwin-Hall) from PCG, plain arithmetic that gives the same bits
// on every platform and Go version.
func fill(dst []float32, family, name string) {
	h := fnv.New64a()
	h.Write([]byte(family + "/" + name))
	src := rand.NewPCG(seed, h.Sum64())
	norm := strings.HasSuffix(name, "norm.weight")
	for i := range dst {
		var s float64
		for range 12 {
			s += float64(src.Uint64()>>11) * 0x1p-53
		}
		z := float64((s - 6) * 0.02)
		if norm {
			z += 1
		}
		dst[i] = float32(z)
	}
}

// marshal is indented JSON with a trailing newline and without HTML
// escaping ("<s>" stays "<s>").
func marshal(v any, indent string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

const readmeHead = `# Tiny random checkpoints

Generated by ` + "`go run ./testdata/gen`" + ` (see testdata/gen/main.go); do not edit by hand:
model's tests regenerate them and fail when these files differ. Random
weights (fixed seed, N(0, 0.02)-ish, norms 1 + noise): the models produce
noise, but every shape, name and file layout is that of a real Hugging Face
checkpoint. 2 layers, 4 heads, 2 KV heads, vocab 384 (the tokenizer has 380
tokens, so 4 embedding rows are spare).

| folder | type | hidden | heads / kv | head_dim | embeddings | dtype | weight files |
| --- | --- | ---: | --- | ---: | --- | --- | ---: |
`

const readmeTail = `
qwen2 has q/k/v biases; qwen3 has q/k norms and head_dim 16 != hidden/heads;
llama-sharded is llama with an untied lm_head, split over 3 shards with
model.safetensors.index.json.

The mixture-of-experts checkpoints: qwen2_moe (4 experts, top-2 without
renormalisation, a shared expert of 64 scaled by its sigmoid gate, layer 0
dense through mlp_only_layers, q/k/v biases); qwen3_moe (8 experts, top-2
renormalised, q/k norms, head_dim 16, tied); mixtral (4 experts of 48, top-2,
block_sparse_moe.experts.N.w1/w2/w3).

Every folder has the same SentencePiece-style tokenizer.json (BPE, byte
fallback): 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then U+2581 and the
printable ASCII characters, then 26 merges of common English pairs.
`
