package model

import (
	"fmt"
	"slices"
)

// MoE is the sparse FFN of a mixture-of-experts checkpoint, as
// transformers' Qwen2Moe, Qwen3Moe and Mixtral modules compute it: router
// logits W_g x, p = softmax(logits) in fp32, the top-k experts by p (their
// weights renormalised when NormTopK), out = sum_k w_k SwiGLU_k(x), plus
// (qwen2_moe) a shared expert scaled by sigmoid(W_sg x). Dropless.
type MoE struct {
	Experts            int     // num_experts (mixtral: num_local_experts)
	TopK               int     // num_experts_per_tok
	Intermediate       int     // moe_intermediate_size (mixtral: intermediate_size)
	SharedIntermediate int     // shared_expert_intermediate_size; 0: no shared expert
	NormTopK           bool    // norm_topk_prob (mixtral: always)
	SparseStep         int     // decoder_sparse_step
	MLPOnly            []int   // mlp_only_layers: dense layers
	AuxCoef            float64 // router_aux_loss_coef
	// Prefix is the module of the sparse block: "mlp." or "block_sparse_moe.".
	Prefix string
	// Mixtral names its experts' projections w1 (gate), w3 (up), w2 (down).
	gateName, upName, downName string
}

// parseMoE reads the MoE keys of config.json; nil for dense model types.
func parseMoE(modelType string, g *getter) *MoE {
	m := &MoE{TopK: g.int("num_experts_per_tok", 2), SparseStep: 1, AuxCoef: g.float("router_aux_loss_coef", 0.001),
		Prefix: "mlp.", gateName: "gate_proj", upName: "up_proj", downName: "down_proj"}
	switch modelType {
	case "mixtral":
		m.Experts = g.int("num_local_experts", 8)
		m.Intermediate = g.int("intermediate_size", 0)
		m.NormTopK = true
		m.Prefix, m.gateName, m.upName, m.downName = "block_sparse_moe.", "w1", "w3", "w2"
		return m
	case "qwen2_moe":
		m.SharedIntermediate = g.int("shared_expert_intermediate_size", 0)
	case "qwen3_moe":
	default:
		return nil
	}
	m.Experts = g.int("num_experts", 0)
	m.Intermediate = g.int("moe_intermediate_size", 0)
	m.NormTopK = g.bool("norm_topk_prob", false)
	m.SparseStep = g.int("decoder_sparse_step", 1)
	switch v := g.raw["mlp_only_layers"].(type) {
	case nil:
	case []any:
		for _, e := range v {
			f, ok := e.(float64)
			if !ok || f != float64(int(f)) {
				g.fail("mlp_only_layers", g.raw["mlp_only_layers"], "a list of layer indices")
				break
			}
			m.MLPOnly = append(m.MLPOnly, int(f))
		}
	default:
		g.fail("mlp_only_layers", v, "a list of layer indices")
	}
	return m
}

func (m *MoE) validate() error {
	if m == nil {
		return nil
	}
	switch {
	case m.Experts <= 0:
		return fmt.Errorf("num_experts must be a positive integer, got %d", m.Experts)
	case m.TopK <= 0 || m.TopK > m.Experts:
		return fmt.Errorf("num_experts_per_tok must be between 1 and num_experts (%d), got %d", m.Experts, m.TopK)
	case m.Intermediate <= 0:
		return fmt.Errorf("moe_intermediate_size must be a positive integer, got %d", m.Intermediate)
	case m.SparseStep <= 0:
		return fmt.Errorf("decoder_sparse_step must be a positive integer, got %d", m.SparseStep)
	case m.SharedIntermediate < 0:
		return fmt.Errorf("shared_expert_intermediate_size must not be negative, got %d", m.SharedIntermediate)
	}
	return nil
}

// Shared reports whether there is a shared expert (qwen2_moe).
func (m *MoE) Shared() bool { return m.SharedIntermediate > 0 }

// Groups is the number of expert groups a token is dispatched over: the
// routed experts, plus the shared expert as group Experts.
func (m *MoE) Groups() int {
	if m.Shared() {
		return m.Experts + 1
	}
	return m.Experts
}

// KOut is the number of assignments per token (top-k, plus the shared expert).
func (m *MoE) KOut() int {
	if m.Shared() {
		return m.TopK + 1
	}
	return m.TopK
}

// RouterRows is the number of rows of the router matrix as dllm holds it:
// the gate, then (qwen2_moe) the shared expert's gate, adjacent in the
// parameter buffer so that one matmul computes both.
func (m *MoE) RouterRows() int {
	if m.Shared() {
		return m.Experts + 1
	}
	return m.Experts
}

// SparseLayer reports whether decoder layer l has the sparse FFN; the others
// have the dense mlp.{gate,up,down}_proj with intermediate_size.
func (c *Config) SparseLayer(l int) bool {
	m := c.MoE
	if m == nil {
		return false
	}
	return !slices.Contains(m.MLPOnly, l) && (l+1)%m.SparseStep == 0
}

// SparseLayers lists the sparse decoder layers.
func (c *Config) SparseLayers() []int {
	var out []int
	for l := 0; l < c.Layers; l++ {
		if c.SparseLayer(l) {
			out = append(out, l)
		}
	}
	return out
}

// ActiveParamCount is the number of parameters one token uses: everything
// but the experts it is not routed to.
func (c *Config) ActiveParamCount() int64 {
	n := c.ParamCount()
	if c.MoE == nil {
		return n
	}
	m := c.MoE
	idle := int64(m.Experts-m.TopK) * int64(3*m.Intermediate*c.Hidden)
	return n - int64(len(c.SparseLayers()))*idle
}
