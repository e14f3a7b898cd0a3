package model

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/safetensors"
)

const moeFixtures = "../testdata/reference/fixtures/moe"

// TestMoEMatchesPyTorch runs forward, loss (cross-entropy plus the router's
// load-balancing loss times router_aux_loss_coef) and backward for the
// qwen2_moe (shared expert, a dense layer between sparse ones), qwen3_moe
// (renormalised top-k, q/k norms) and mixtral fixtures under every
// visibility rule, and compares logits, the losses, the per-expert token
// counts and every gradient (router and shared-expert gate included) with
// PyTorch's float64 results.
func TestMoEMatchesPyTorch(t *testing.T) {
	var list struct {
		Cases []struct {
			engineCase
			AuxCoef float64 `json:"aux_coef"`
		}
	}
	readJSON(t, filepath.Join(moeFixtures, "cases.json"), &list)
	if len(list.Cases) != 15 {
		t.Fatalf("%d cases, want 15", len(list.Cases))
	}
	for _, c := range list.Cases {
		t.Run(c.File, func(t *testing.T) {
			dir := filepath.Join(moeFixtures, c.Config)
			be := cpu.New(2)
			m, err := Load(dir, be)
			if err != nil {
				t.Fatal(err)
			}
			if m.Cfg.MoE == nil || m.Cfg.MoE.AuxCoef != c.AuxCoef {
				t.Fatalf("config: MoE %+v, want router_aux_loss_coef %v", m.Cfg.MoE, c.AuxCoef)
			}
			var in engineInputs
			readJSON(t, filepath.Join(dir, "inputs.json"), &in)
			B, L := len(in.InputIDs), len(in.InputIDs[0])
			a := m.NewActivations(B, L, true)
			for b := 0; b < B; b++ {
				for i := 0; i < L; i++ {
					r := b*L + i
					a.IDs[r], a.Docs[r] = in.InputIDs[b][i], in.DocIDs[b][i]
					a.Targets[r], a.Weights[r] = max(in.Targets[b][i], -1), in.Weights[b][i]
				}
			}
			a.Upload(be)
			a.AuxCoef = c.AuxCoef
			vis := visibilityOf(c.engineCase)
			m.Forward(a, vis)
			want, err := safetensors.Open(filepath.Join(dir, filepath.Base(c.File)))
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			wl, _ := want.Float32("logits")
			logitErr := relErr(a.Logits.Host, wl)
			if !(logitErr < 1e-5) {
				t.Errorf("logits: relative error %g", logitErr)
			}
			wc, _ := want.Float32("expert_counts")
			counts := a.ExpertCounts()
			E := m.Cfg.MoE.Experts
			if len(counts)*E != len(wc) {
				t.Fatalf("%d sparse layers of %d experts, reference has %d counts", len(counts), E, len(wc))
			}
			for l, row := range counts {
				for e, n := range row {
					if float32(n) != wc[l*E+e] {
						t.Errorf("sparse layer %d expert %d: %d tokens, reference %v", l, e, n, wc[l*E+e])
					}
				}
			}
			waux, _ := want.Float32("aux")
			if e := math.Abs(a.AuxLoss()-float64(waux[0])) / float64(waux[0]); !(e < 1e-5) {
				t.Errorf("aux loss %v, reference %v", a.AuxLoss(), waux[0])
			}
			sum, _ := m.Loss(a, in.Norm, true)
			loss := sum/in.Norm + c.AuxCoef*a.AuxLoss()
			wloss, _ := want.Float32("loss")
			if e := math.Abs(loss-float64(wloss[0])) / math.Abs(float64(wloss[0])); !(e < 1e-5) {
				t.Errorf("loss %v, reference %v", loss, wloss[0])
			}
			if err := m.Backward(a, vis); err != nil {
				t.Fatal(err)
			}
			n, worst := 0, 0.0
			for _, s := range m.Layout.Specs {
				g, _ := m.Layout.View(m.Grads, s.Name)
				wg, err := want.Float32("grad." + s.Name)
				if err != nil {
					t.Fatal(err)
				}
				e := relErr(g.Host, wg)
				if !(e < 1e-4) {
					t.Errorf("grad %s: relative error %g", s.Name, e)
				}
				worst = max(worst, e)
				n++
			}
			t.Logf("logits %.2g, aux %.4f, worst gradient %.2g over %d tensors", logitErr, a.AuxLoss(), worst, n)
			if n != len(want.Names())-5 {
				t.Errorf("compared %d gradients, the reference has %d tensors", n, len(want.Names()))
			}
		})
	}
}
