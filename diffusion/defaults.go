package diffusion

import (
	"encoding/json"
	"math"
	"path/filepath"

	"github.com/dllm-dev/dllm/model"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// DefaultGenLen is the number of tokens generated when neither the caller
// nor generation_config.json says.
const DefaultGenLen = 128

// GenDefaults are the sampler settings used where a caller gives none (`dllm
// generate` flags, `dllm serve` request fields): DefaultGenLen tokens,
// greedy confidence order, overridden by the keys of the model's
// generation_config.json (gen_length, steps, block_length, alg, alg_temp,
// temperature, top_p, top_k, threshold). A key of the wrong type is ignored.
func GenDefaults(dir string) GenOptions {
	o := GenOptions{GenLen: DefaultGenLen, Alg: AlgConfidence}
	b, err := regfile.ReadFile(filepath.Join(dir, "generation_config.json"))
	if err != nil {
		return o
	}
	var gc map[string]any
	if json.Unmarshal(b, &gc) != nil {
		return o
	}
	integer := func(key string, dst *int) {
		if v, ok := gc[key].(float64); ok && v == math.Trunc(v) && math.Abs(v) < 1<<31 {
			*dst = int(v)
		}
	}
	float := func(key string, dst *float64) {
		if v, ok := gc[key].(float64); ok {
			*dst = v
		}
	}
	integer("gen_length", &o.GenLen)
	integer("steps", &o.Steps)
	integer("block_length", &o.BlockLen)
	integer("top_k", &o.TopK)
	if v, ok := gc["alg"].(string); ok {
		o.Alg = Alg(v)
	}
	float("alg_temp", &o.AlgTemp)
	float("temperature", &o.Temperature)
	float("top_p", &o.TopP)
	float("threshold", &o.Threshold)
	return o
}

// EOSSet is the set of tokens that end a sample: the config's
// eos_token_id(s) and the tokenizer's EOS (tokEOS < 0: none).
func EOSSet(cfg *model.Config, tokEOS int) []int32 { return model.EOSSet(cfg, tokEOS) }
