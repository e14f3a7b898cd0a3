// Package oddshapes gives tests a tiny model's config.json with
// stories260K-like odd shapes: vocabulary 513, width 36 (3 heads of 12 over
// 1 KV head), FFN 37, experts of 13, a shared expert of 19. No tensor
// length is then a multiple of 8, so packed tensors would start unaligned.
// The model package's tests and kernels/cuda's both build their model from
// it (it imports neither).
package oddshapes

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// shapes are the odd values, set where the source config has the key.
var shapes = map[string]any{"vocab_size": 513, "hidden_size": 36, "intermediate_size": 37, "num_attention_heads": 3,
	"num_key_value_heads": 1, "moe_intermediate_size": 13, "shared_expert_intermediate_size": 19, "torch_dtype": "float32"}

// Config reads dir/config.json (a tiny model's) and returns it with the
// odd shapes and torch_dtype float32 (a test fills the weights in float32).
func Config(dir string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	for k, v := range shapes {
		if _, ok := raw[k]; ok {
			raw[k] = v
		}
	}
	return json.Marshal(raw)
}
