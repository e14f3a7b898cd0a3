package main

import (
	"fmt"
	"strings"

	"github.com/dllm-dev/dllm/model"
)

// moeReport is inspect's view of a mixture-of-experts config.
type moeReport struct {
	Experts            int     `json:"experts"`
	TopK               int     `json:"top_k"`
	ExpertIntermediate int     `json:"expert_intermediate_size"`
	SharedIntermediate int     `json:"shared_expert_intermediate_size,omitempty"`
	NormTopK           bool    `json:"norm_topk_prob"`
	SparseLayers       []int   `json:"sparse_layers"`
	AuxCoef            float64 `json:"router_aux_loss_coef"`
	ActiveParameters   int64   `json:"active_parameters"`
}

func moeOf(cfg *model.Config) *moeReport {
	m := cfg.MoE
	if m == nil {
		return nil
	}
	sl := cfg.SparseLayers()
	if sl == nil {
		sl = []int{}
	}
	return &moeReport{Experts: m.Experts, TopK: m.TopK, ExpertIntermediate: m.Intermediate, SharedIntermediate: m.SharedIntermediate,
		NormTopK: m.NormTopK, SparseLayers: sl, AuxCoef: m.AuxCoef, ActiveParameters: cfg.ActiveParamCount()}
}

func printMoE(p func(k, format string, a ...any), layers int, m *moeReport) {
	renorm := "weights not renormalised"
	if m.NormTopK {
		renorm = "weights renormalised"
	}
	p("experts", "%d, top-%d (%s), expert ffn %d", m.Experts, m.TopK, renorm, m.ExpertIntermediate)
	if m.SharedIntermediate > 0 {
		p("shared expert", "ffn %d, scaled by sigmoid(shared_expert_gate x)", m.SharedIntermediate)
	}
	ls := make([]string, len(m.SparseLayers))
	for i, l := range m.SparseLayers {
		ls[i] = fmt.Sprint(l)
	}
	p("sparse layers", "%d of %d (%s); the others dense", len(m.SparseLayers), layers, strings.Join(ls, " "))
	p("active params", "%s per token", commas(m.ActiveParameters))
	p("router aux loss", "coefficient %g (router_aux_loss_coef)", m.AuxCoef)
}
