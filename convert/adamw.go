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
// moments (fp32, in the trained values' layout: the model's parameters, or a
// LoRA adapter's) and the parameter groups,
// with weight decay on matrices only (norms and biases none, as HF Trainer
// does) unless DecayAll. It is saved in a checkpoint's
// optimizer.safetensors as "m.NAME" and "v.NAME".
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64

	M, V   kernels.Buf
	set    trainSet
	groups []paramGroup
}

// trainSet is what an optimizer updates: values and gradients laid out as
// layout, named (in checkpoints) by specs and read by fetch.
type trainSet struct {
	be            kernels.Backend
	layout        *model.Layout
	params, grads func() kernels.Buf
	specs         []safetensors.Spec
	fetch         func(kernels.Buf) safetensors.Fetch
	written       func() // after an update (the model's bf16 copies)
	copies        func() []model.BF16Run
}

// modelSet is every parameter of m (full fine-tuning).
func modelSet(m *model.Model) trainSet {
	return trainSet{be: m.BE, layout: m.Layout, params: func() kernels.Buf { return m.Params }, grads: func() kernels.Buf { return m.Grads },
		specs: m.ExportSpecs(), fetch: m.FetchFrom, written: m.ParamsWritten, copies: m.BF16Runs}
}

type paramGroup struct {
	off, n int
	decay  bool
}

// NewAdamW allocates zero moments for m's parameters.
func NewAdamW(m *model.Model, beta1, beta2, eps, weightDecay float64, decayAll bool) *AdamW {
	return newAdamW(modelSet(m), beta1, beta2, eps, weightDecay, decayAll)
}

func newAdamW(set trainSet, beta1, beta2, eps, weightDecay float64, decayAll bool) *AdamW {
	be, n := set.be, set.layout.Total
	a := &AdamW{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: weightDecay, set: set, M: be.Alloc(n), V: be.Alloc(n)}
	be.Zero(a.M)
	be.Zero(a.V)
	for i, s := range set.layout.Specs {
		d := decayAll || model.Decays(s.Name)
		off := set.layout.Offsets[i]
		// Tensors follow one another; a group spans the alignment padding
		// between them (zero values and gradients: it stays zero).
		if k := len(a.groups) - 1; k >= 0 && a.groups[k].decay == d {
			a.groups[k].n = off + s.Elements() - a.groups[k].off
			continue
		}
		a.groups = append(a.groups, paramGroup{off, s.Elements(), d})
	}
	return a
}

// Step applies update number step (from 1) at learning rate lr, the
// gradients first multiplied by gradScale (global-norm clipping). Where the
// backend has kernels.AdamWBF16, each launch that ends a run of tensors
// with bf16 copies (inside one group) writes the run's copy too; the
// copies are remade afterwards only when a run was not covered so.
func (a *AdamW) Step(lr float64, step int, gradScale float32) {
	be, p, g := a.set.be, a.set.params(), a.set.grads()
	h := kernels.AdamW{LR: float32(lr), Beta1: float32(a.Beta1), Beta2: float32(a.Beta2), Eps: float32(a.Eps),
		BC1: float32(1 - math.Pow(a.Beta1, float64(step))), BC2: float32(1 - math.Pow(a.Beta2, float64(step))), GradScale: gradScale}
	var runs []model.BF16Run
	fused, ok := be.(kernels.AdamWBF16)
	if ok && a.set.copies != nil {
		runs = a.set.copies()
	}
	covered, j := 0, 0
	for _, gr := range a.groups {
		h.WeightDecay = 0
		if gr.decay {
			h.WeightDecay = float32(a.WeightDecay)
		}
		at, end := gr.off, gr.off+gr.n
		for ; j < len(runs) && runs[j].Src < end; j++ {
			r := runs[j]
			if r.Src < at || r.Src+r.N > end {
				continue // across groups: ParamsWritten remakes it
			}
			n := r.Src + r.N - at
			fused.AdamWStepBF16(p.Slice(at, n), g.Slice(at, n), a.M.Slice(at, n), a.V.Slice(at, n), n, h, r.Copy, r.Src-at)
			at += n
			covered++
		}
		if at < end {
			be.AdamWStep(p.Slice(at, end-at), g.Slice(at, end-at), a.M.Slice(at, end-at), a.V.Slice(at, end-at), end-at, h)
		}
	}
	if a.set.written != nil && (len(runs) == 0 || covered < len(runs)) {
		a.set.written()
	}
}

// Free returns the moments to the backend.
func (a *AdamW) Free() {
	a.set.be.Free(a.M)
	a.set.be.Free(a.V)
}

// Save writes the moments as optimizer*.safetensors into dir.
func (a *AdamW) Save(dir string) error {
	var specs []safetensors.Spec
	for _, s := range a.set.specs {
		specs = append(specs, safetensors.Spec{Name: "m." + s.Name, Shape: s.Shape}, safetensors.Spec{Name: "v." + s.Name, Shape: s.Shape})
	}
	fm, fv := a.set.fetch(a.M), a.set.fetch(a.V)
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
	be, l := a.set.be, a.set.layout
	f, err := safetensors.Open(filepath.Join(dir, "optimizer.safetensors"))
	if err != nil {
		return err
	}
	defer f.Close()
	host := make([]float32, l.Total)
	for _, which := range []string{"m.", "v."} {
		for i, s := range a.set.specs {
			off, n := l.Offsets[i], l.Specs[i].Elements()
			if err := f.ReadFloat32Into(which+s.Name, host[off:off+n]); err != nil {
				return err
			}
		}
		if which == "m." {
			be.Upload(a.M, host)
		} else {
			be.Upload(a.V, host)
		}
	}
	return be.Err()
}
