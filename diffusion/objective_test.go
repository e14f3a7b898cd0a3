package diffusion

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

const objFixtures = "../testdata/reference/fixtures/objective"

type objInputs struct {
	X0     [][]int32 `json:"x0"`
	T      []float64 `json:"t"`
	MaskID int32     `json:"mask_id"`
	P      float64   `json:"p"`
	Shift  struct {
		Masked [][]int `json:"masked_positions"`
	} `json:"shift"`
	NoShift struct {
		Masked [][]int `json:"masked_positions"`
	} `json:"noshift"`
	Cart struct {
		Length   int
		P        float64
		Unmasked []int
		Weights  []float64
	} `json:"cart_example"`
	Cases []struct {
		File      string
		Weighting Weighting
		Shift     bool
		Norm      Norm
		NormValue float64 `json:"norm_value"`
	}
}

func loadObjInputs(t *testing.T) objInputs {
	raw, err := os.ReadFile(filepath.Join(objFixtures, "inputs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in objInputs
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	return in
}

// checkStep runs forward, loss and backward on uploaded activations and
// compares the logits of the scored rows, the loss and every parameter
// gradient with a PyTorch fixture (logits [rows, V] of the whole batch).
func checkStep(t *testing.T, m *model.Model, a *model.Activations, vis kernels.Visibility, want *safetensors.Reader, norm float64) {
	t.Helper()
	V, k := m.Cfg.Vocab, a.NRows()
	m.Forward(a, vis)
	wl, _ := want.Float32("logits")
	got, ref := make([]float32, 0, k*V), make([]float32, 0, k*V)
	for j := 0; j < k; j++ {
		got = append(got, a.Logits.Host[j*V:(j+1)*V]...)
		r := int(a.Rows[j])
		ref = append(ref, wl[r*V:(r+1)*V]...)
	}
	if e := relErr(got, ref); !(e < 1e-4) {
		t.Errorf("logits of scored rows: relative error %g", e)
	}
	sum, _ := m.Loss(a, norm, true)
	wloss, _ := want.Float32("loss")
	if e := math.Abs(sum/norm-float64(wloss[0])) / float64(wloss[0]); !(e < 1e-5) {
		t.Errorf("loss %v, reference %v", sum/norm, wloss[0])
	}
	m.EnableGrads()
	m.BE.Zero(m.Grads)
	if err := m.Backward(a, vis); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Layout.Specs {
		g, _ := m.Layout.View(m.Grads, s.Name)
		wg, err := want.Float32("grad." + s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if e := relErr(g.Host, wg); !(e < 1e-4) {
			t.Errorf("grad %s: relative error %g", s.Name, e)
		}
	}
}

func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

// TestCARTHandChecked: one row of 8 with positions 0, 3 and 7 unmasked; the
// reference holds the exact rational weights (w1 = 0.1245245 by hand).
func TestCARTHandChecked(t *testing.T) {
	in := loadObjInputs(t)
	c := in.Cart
	o := Objective{Weighting: CART, CartP: c.P, Norm: NormMasked, TMin: 1e-3}
	b := NewBatch(1, c.Length)
	for i := range b.Masked {
		b.Masked[i] = true
	}
	for _, i := range c.Unmasked {
		b.Masked[i] = false
	}
	b.NMasked = c.Length - len(c.Unmasked)
	o.Score(b)
	k := 0
	for i, want := range c.Weights {
		if !b.Masked[i] {
			continue
		}
		if got := float64(b.Weights[k]); math.Abs(got-want) > 1e-7 {
			t.Errorf("w_%d = %v, reference %v", i, got, want)
		}
		k++
	}
	if math.Abs(c.Weights[1]-0.1245245) > 1e-12 {
		t.Fatalf("fixture's w1 %v is not the hand value 0.1245245", c.Weights[1])
	}
}

// TestObjectiveMatchesPyTorch: for fixed x0, t and masks, the weights, loss
// and every parameter gradient of elbo / cart / uniform x shift on/off x
// masked/tokens normalisation agree with PyTorch to 1e-4.
func TestObjectiveMatchesPyTorch(t *testing.T) {
	in := loadObjInputs(t)
	if len(in.Cases) != 12 {
		t.Fatalf("%d cases, want 12", len(in.Cases))
	}
	be := cpu.New(2)
	m, err := model.Load(objFixtures, be)
	if err != nil {
		t.Fatal(err)
	}
	B, L := len(in.X0), len(in.X0[0])
	for _, c := range in.Cases {
		t.Run(c.File, func(t *testing.T) {
			o := Objective{MaskID: in.MaskID, Shift: c.Shift, Weighting: c.Weighting, CartP: in.P, Norm: c.Norm, TMin: 1e-3}
			b := NewBatch(B, L)
			masked := in.NoShift.Masked
			if c.Shift {
				masked = in.Shift.Masked
			}
			for r := 0; r < B; r++ {
				copy(b.X0[r*L:], in.X0[r])
				copy(b.XT[r*L:], in.X0[r])
				b.T[r] = in.T[r]
				for _, i := range masked[r] {
					b.Masked[r*L+i] = true
					b.XT[r*L+i] = in.MaskID
					b.NMasked++
				}
			}
			norm := o.Score(b)
			if norm != c.NormValue {
				t.Fatalf("norm %v, reference %v", norm, c.NormValue)
			}
			want, err := safetensors.Open(filepath.Join(objFixtures, c.File))
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			tw, _ := want.Float32("token_weights")
			k := 0
			for n := 0; n < B*L; n++ {
				if b.Masked[n] {
					if math.Abs(float64(b.Weights[k]-tw[n])) > 1e-6*math.Abs(float64(tw[n])) {
						t.Errorf("weight at %d: %v, reference %v", n, b.Weights[k], tw[n])
					}
					k++
				} else if tw[n] != 0 {
					t.Errorf("reference weighs unmasked position %d", n)
				}
			}

			a := m.NewActivations(B, L, true)
			copy(a.IDs, b.XT)
			copy(a.ScoreRows(k), b.Rows[:k])
			copy(a.Targets, b.Targets[:k])
			copy(a.Weights, b.Weights[:k])
			a.Upload(be)
			checkStep(t, m, a, kernels.Visibility{Mode: kernels.Bidirectional}, want, norm)
		})
	}
}

// TestMaskingStatistics: the masked fraction follows t, position 0 is never
// masked with shift, fixed positions never are, and a stratified count is
// exact.
func TestMaskingStatistics(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	o := Objective{MaskID: 99, Shift: true, Weighting: ELBO, Norm: NormMasked, TMin: 1e-3}
	const B, L = 4, 512
	b := NewBatch(B, L)
	b.Fixed = make([]bool, B*L)
	for i := 0; i < B*L; i += 7 {
		b.Fixed[i] = true
	}
	for trial := 0; trial < 20; trial++ {
		o.DrawTimes(rng, b, trial%2 == 0)
		o.Mask(rng, b)
		for r := 0; r < B; r++ {
			if b.Masked[r*L] {
				t.Fatal("position 0 masked with shift on")
			}
			n := 0
			for i := 0; i < L; i++ {
				if b.Masked[r*L+i] {
					n++
					if b.Fixed[r*L+i] || b.XT[r*L+i] != 99 {
						t.Fatal("fixed position masked, or masked position not the mask id")
					}
				}
			}
			want := b.T[r] * float64(L-1-L/7)
			if math.Abs(float64(n)-want) > 5*math.Sqrt(want+1) {
				t.Errorf("row %d: %d masked at t=%.3f, expected about %.0f", r, n, b.T[r], want)
			}
		}
	}
	b.Count = []int{1, 10, 100, 400}
	o.Mask(rng, b)
	o.Score(b)
	for r, k := range b.Count {
		n := 0
		for i := 0; i < L; i++ {
			if b.Masked[r*L+i] {
				n++
			}
		}
		if n != k {
			t.Errorf("row %d: %d masked, count %d", r, n, k)
		}
	}
}
