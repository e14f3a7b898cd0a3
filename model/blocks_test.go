package model

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
)

var tinyArchs = []string{"llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral"}

func loadTiny(t *testing.T, arch string) *Model {
	t.Helper()
	m, err := Load(filepath.Join("..", "testdata", "tiny", arch), cpu.New(2))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// stepResult is one forward, loss and backward of a fixed random batch.
type stepResult struct {
	logits, grads []float32
	loss          float64
}

// runStep scores every third position (or, with all, every position
// through nil Rows) of a seeded random batch of 2 x 12 tokens.
func runStep(t *testing.T, m *Model, o ActOptions, all bool) stepResult {
	t.Helper()
	B, L, V := 2, 12, m.Cfg.Vocab
	rng := rand.New(rand.NewPCG(7, 1))
	a := m.NewActivationsWith(B, L, o)
	defer a.Free(m.BE)
	a.AuxCoef = 0.1 // MoE: the load-balancing loss's gradient too
	rows := a.ScoreRows(B * L)
	k := 0
	for i := 0; i < B*L; i++ {
		a.IDs[i], a.Docs[i] = int32(rng.IntN(V)), int32(i%L/5)
		if all || i%3 == 0 {
			rows[k], a.Targets[k], a.Weights[k] = int32(i), int32(rng.IntN(V)), float32(1+rng.Float64())
			k++
		}
	}
	if all {
		a.ScoreAll()
	} else {
		a.ScoreRows(k)
	}
	a.Upload(m.BE)
	if m.Grads.N > 0 {
		m.BE.Zero(m.Grads)
	}
	vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.4, Seed: 3, DocMask: true}
	m.Forward(a, vis)
	r := stepResult{logits: slices.Clone(a.Logits.Host[:a.NRows()*V])}
	r.loss, _ = m.Loss(a, float64(k), true)
	if err := m.Backward(a, vis); err != nil {
		t.Fatal(err)
	}
	r.grads = slices.Clone(m.Grads.Host)
	return r
}

// TestTableDrivesViews checks that every row of the blocks' table is the
// tensor of the same name in the layout, viewed in both buffers.
func TestTableDrivesViews(t *testing.T) {
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		m.EnableGrads()
		specs := m.Cfg.Tensors()
		if len(m.table) != len(specs) || len(specs) != len(m.Layout.Specs) {
			t.Fatalf("%s: %d table rows, %d tensors, %d in the layout", arch, len(m.table), len(specs), len(m.Layout.Specs))
		}
		for i, p := range m.table {
			w, _ := m.Layout.View(m.Params, specs[i].Name)
			g, _ := m.Layout.View(m.Grads, specs[i].Name)
			if p.Suffix != specs[i].Name || p.W.N != specs[i].Elements() || &p.W.Host[0] != &w.Host[0] || &p.G.Host[0] != &g.Host[0] {
				t.Errorf("%s: row %d (%s) is not the view of %s", arch, i, p.Suffix, specs[i].Name)
			}
		}
		if m.Cfg.TieEmbeddings && &m.Head.W.Host[0] != &m.Embed.W.Host[0] {
			t.Errorf("%s: tied head does not view the embedding", arch)
		}
	}
}

// TestNilRowsMeansAllRows: scoring every position through nil Rows and
// through an explicit list of every position gives the same bits.
func TestNilRowsMeansAllRows(t *testing.T) {
	m := loadTiny(t, "qwen2")
	a := m.NewActivations(1, 5, false)
	if a.Rows != nil || a.NRows() != 5 || len(a.Targets) != 5 {
		t.Fatalf("new activations: rows %v, NRows %d, %d targets", a.Rows, a.NRows(), len(a.Targets))
	}
	want := runStep(t, m, ActOptions{Training: true}, true)
	B, L, V := 2, 12, m.Cfg.Vocab
	rng := rand.New(rand.NewPCG(7, 1))
	b := m.NewActivations(B, L, true)
	rows := b.ScoreRows(B * L)
	for i := range rows {
		b.IDs[i], b.Docs[i] = int32(rng.IntN(V)), int32(i%L/5)
		rows[i], b.Targets[i], b.Weights[i] = int32(i), int32(rng.IntN(V)), float32(1+rng.Float64())
	}
	b.Upload(m.BE)
	m.BE.Zero(m.Grads)
	vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.4, Seed: 3, DocMask: true}
	m.Forward(b, vis)
	if !slices.Equal(b.Logits.Host[:B*L*V], want.logits) {
		t.Error("logits differ between nil Rows and every row listed")
	}
	m.Loss(b, float64(B*L), true)
	if err := m.Backward(b, vis); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.Grads.Host, want.grads) {
		t.Error("gradients differ between nil Rows and every row listed")
	}
}

// TestFrozenLinear: a frozen linear gets no weight or bias gradient, and
// every other gradient is bit for bit what it is unfrozen (its input
// gradient still flows).
func TestFrozenLinear(t *testing.T) {
	m := loadTiny(t, "qwen2")
	want := runStep(t, m, ActOptions{Training: true}, false)
	q := &m.Layers[0].Attn.Q
	if !q.Bias {
		t.Fatal("qwen2's q_proj should have a bias")
	}
	q.Frozen = true
	got := runStep(t, m, ActOptions{Training: true}, false)
	frozen := map[string]bool{LayerPrefix(0) + "self_attn.q_proj.weight": true, LayerPrefix(0) + "self_attn.q_proj.bias": true}
	for i, s := range m.Layout.Specs {
		lo, hi := m.Layout.Offsets[i], m.Layout.Offsets[i]+s.Elements()
		g, w := got.grads[lo:hi], want.grads[lo:hi]
		if frozen[s.Name] {
			if slices.ContainsFunc(g, func(v float32) bool { return v != 0 }) || !slices.ContainsFunc(w, func(v float32) bool { return v != 0 }) {
				t.Errorf("%s: frozen gradient not zero (or the unfrozen one is)", s.Name)
			}
		} else if !slices.Equal(g, w) {
			t.Errorf("%s: gradient changed by freezing q_proj", s.Name)
		}
	}
}

// TestRecomputeBitIdentical: recomputing each layer before its backward
// gives the same loss and gradients, bit for bit, for every architecture,
// with a subset of rows and with all of them.
func TestRecomputeBitIdentical(t *testing.T) {
	for _, arch := range tinyArchs {
		m := loadTiny(t, arch)
		for _, all := range []bool{false, true} {
			want := runStep(t, m, ActOptions{Training: true}, all)
			got := runStep(t, m, ActOptions{Training: true, Recompute: true}, all)
			if got.loss != want.loss || !slices.Equal(got.logits, want.logits) || !slices.Equal(got.grads, want.grads) {
				t.Errorf("%s (all rows %v): recompute changed the loss (%v vs %v) or the gradients", arch, all, got.loss, want.loss)
			}
			if slices.ContainsFunc(got.grads, func(v float32) bool { return v != v }) {
				t.Errorf("%s: NaN gradient", arch)
			}
		}
	}
}
