package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/safetensors"
)

const engineFixtures = "../testdata/reference/fixtures/engine"

type engineCase struct {
	Config  string
	File    string
	Mode    string
	Ratio   *float64
	Seed    *uint64
	Block   *int
	DocMask bool `json:"doc_mask"`
}

type engineInputs struct {
	InputIDs [][]int32   `json:"input_ids"`
	DocIDs   [][]int32   `json:"doc_ids"`
	Targets  [][]int32   `json:"targets"`
	Weights  [][]float32 `json:"weights"`
	Norm     float64     `json:"norm"`
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// relErr is ||a-b|| / ||b||; NaN anywhere makes it NaN, which fails every
// comparison.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func visibilityOf(c engineCase) kernels.Visibility {
	m, err := kernels.ParseMode(c.Mode)
	if err != nil {
		panic(err)
	}
	v := kernels.Visibility{Mode: m, DocMask: c.DocMask}
	if c.Ratio != nil {
		v.Ratio = float32(*c.Ratio)
	}
	if c.Seed != nil {
		v.Seed = *c.Seed
	}
	if c.Block != nil {
		v.Block = *c.Block
	}
	return v
}

// TestEngineMatchesPyTorch runs forward, loss and backward for every config
// (llama, qwen2, qwen3, llama3 rope scaling) and visibility rule (causal,
// bidirectional, annealed 0.3, block 4, each with and without document
// masking) and compares logits, loss and every parameter gradient with
// PyTorch's float64 results.
func TestEngineMatchesPyTorch(t *testing.T) {
	var list struct{ Cases []engineCase }
	readJSON(t, filepath.Join(engineFixtures, "cases.json"), &list)
	if len(list.Cases) != 32 {
		t.Fatalf("%d cases, want 32", len(list.Cases))
	}
	for _, c := range list.Cases {
		t.Run(c.File, func(t *testing.T) {
			dir := filepath.Join(engineFixtures, c.Config)
			be := cpu.New(2)
			m, err := Load(dir, be)
			if err != nil {
				t.Fatal(err)
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
			vis := visibilityOf(c)
			m.Forward(a, vis)
			want, err := safetensors.Open(filepath.Join(dir, filepath.Base(c.File)))
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			wl, _ := want.Float32("logits")
			if e := relErr(a.Logits.Host, wl); !(e < 1e-4) {
				t.Errorf("logits: relative error %g", e)
			}
			sum, _ := m.Loss(a, in.Norm, true)
			wloss, _ := want.Float32("loss")
			if e := math.Abs(sum/in.Norm-float64(wloss[0])) / math.Abs(float64(wloss[0])); !(e < 1e-5) {
				t.Errorf("loss %v, reference %v", sum/in.Norm, wloss[0])
			}
			if err := m.Backward(a, vis); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, s := range m.Layout.Specs {
				g, _ := m.Layout.View(m.Grads, s.Name)
				wg, err := want.Float32("grad." + s.Name)
				if err != nil {
					t.Fatal(err)
				}
				if e := relErr(g.Host, wg); !(e < 1e-4) {
					t.Errorf("grad %s: relative error %g", s.Name, e)
				}
				n++
			}
			if n == 0 {
				t.Fatal("no gradients compared")
			}
		})
	}
}
