package convert

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// AdamW is the optimizer of a run and of the bare Stepper: first and second
// moments (fp32, in the model's parameter layout) and the parameter groups,
// with weight decay on matrices only (norms and biases none, as HF Trainer
// does) unless DecayAll. It is saved in a checkpoint's
// optimizer.safetensors as "m.NAME" and "v.NAME".
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64

	M, V   kernels.Buf
	m      *model.Model
	groups []paramGroup
}

type paramGroup struct {
	off, n int
	decay  bool
}

// NewAdamW allocates zero moments for m's parameters.
func NewAdamW(m *model.Model, beta1, beta2, eps, weightDecay float64, decayAll bool) *AdamW {
	be, n := m.BE, m.Layout.Total
	a := &AdamW{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: weightDecay, m: m, M: be.Alloc(n), V: be.Alloc(n)}
	be.Zero(a.M)
	be.Zero(a.V)
	for i, s := range m.Layout.Specs {
		d := decayAll || model.Decays(s.Name)
		off := m.Layout.Offsets[i]
		if k := len(a.groups) - 1; k >= 0 && a.groups[k].decay == d && a.groups[k].off+a.groups[k].n == off {
			a.groups[k].n += s.Elements()
			continue
		}
		a.groups = append(a.groups, paramGroup{off, s.Elements(), d})
	}
	return a
}

// Step applies update number step (from 1) at learning rate lr, the
// gradients first multiplied by gradScale (global-norm clipping).
func (a *AdamW) Step(lr float64, step int, gradScale float32) {
	m := a.m
	h := kernels.AdamW{LR: float32(lr), Beta1: float32(a.Beta1), Beta2: float32(a.Beta2), Eps: float32(a.Eps),
		BC1: float32(1 - math.Pow(a.Beta1, float64(step))), BC2: float32(1 - math.Pow(a.Beta2, float64(step))), GradScale: gradScale}
	for _, g := range a.groups {
		h.WeightDecay = 0
		if g.decay {
			h.WeightDecay = float32(a.WeightDecay)
		}
		m.BE.AdamWStep(m.Params.Slice(g.off, g.n), m.Grads.Slice(g.off, g.n), a.M.Slice(g.off, g.n), a.V.Slice(g.off, g.n), g.n, h)
	}
}

// Free returns the moments to the backend.
func (a *AdamW) Free() {
	a.m.BE.Free(a.M)
	a.m.BE.Free(a.V)
}

// Save writes the moments as optimizer*.safetensors into dir.
func (a *AdamW) Save(dir string) error {
	m := a.m
	var specs []safetensors.Spec
	for _, s := range m.ExportSpecs() {
		specs = append(specs, safetensors.Spec{Name: "m." + s.Name, Shape: s.Shape}, safetensors.Spec{Name: "v." + s.Name, Shape: s.Shape})
	}
	fm, fv := m.FetchFrom(a.M), m.FetchFrom(a.V)
	fetch := func(name string, dst []float32) error {
		if n, ok := strings.CutPrefix(name, "m."); ok {
			return fm(n, dst)
		}
		return fv(strings.TrimPrefix(name, "v."), dst)
	}
	if _, err := safetensors.Write(dir, specs, fetch, safetensors.WriteOptions{DType: safetensors.F32, BaseName: "optimizer"}); err != nil {
		return fmt.Errorf("checkpoint optimizer: %w", err)
	}
	return nil
}

// Load reads the moments that Save wrote into dir.
func (a *AdamW) Load(dir string) error {
	m := a.m
	f, err := safetensors.Open(filepath.Join(dir, "optimizer.safetensors"))
	if err != nil {
		return err
	}
	defer f.Close()
	host := make([]float32, m.Layout.Total)
	for _, which := range []string{"m.", "v."} {
		for i, s := range m.ExportSpecs() {
			off, n := m.Layout.Offsets[i], m.Layout.Specs[i].Elements()
			if err := f.ReadFloat32Into(which+s.Name, host[off:off+n]); err != nil {
				return err
			}
		}
		if which == "m." {
			m.BE.Upload(a.M, host)
		} else {
			m.BE.Upload(a.V, host)
		}
	}
	return m.BE.Err()
}
