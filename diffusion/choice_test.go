package diffusion

import (
	"math"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
)

func loadChoiceModel(t *testing.T) *model.Model {
	t.Helper()
	be := cpu.New(2)
	t.Cleanup(func() { be.Close() })
	m, err := model.Load(objFixtures, be)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ceAt runs ids alone under vis and returns the cross-entropy of target
// read from logit row.
func ceAt(t *testing.T, m *model.Model, ids []int32, vis kernels.Visibility, row int, target int32) float64 {
	t.Helper()
	a := m.NewActivations(1, len(ids), false)
	defer a.Free(m.BE)
	copy(a.IDs, ids)
	a.ScoreRows(1)
	a.Rows[0], a.Targets[0], a.Weights[0] = int32(row), target, 1
	a.Upload(m.BE)
	m.Forward(a, vis)
	s, _ := m.Loss(a, 1, false)
	return s
}

func with(ids []int32, at map[int]int32) []int32 {
	out := append([]int32(nil), ids...)
	for i, v := range at {
		out[i] = v
	}
	return out
}

// With two continuation tokens and two stratified samples, one sample
// masks one token (weight 2) and the other both (weight 1): the estimate
// must be one of the two values those masks give, computed here by
// direct forwards of the segment alone.
func TestChoiceELBOStratifiedExact(t *testing.T) {
	m := loadChoiceModel(t)
	const M = 3
	info := Info{MaskID: M, Shift: true}
	ids := []int32{1, 9, 14, 22, 7, 30, 11}
	P := 5
	s, err := NewChoiceScorer(m, info, ChoiceOptions{MC: 2, Seed: 7, Stratified: true, B: 1, L: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Free()
	got, err := s.LogLikelihood([]model.Segment{{Tokens: ids, Context: P}}, []uint64{0})
	if err != nil {
		t.Fatal(err)
	}
	bi := kernels.Visibility{Mode: kernels.Bidirectional}
	both := with(ids, map[int]int32{5: M, 6: M})
	ceBoth := ceAt(t, m, both, bi, 4, ids[5]) + ceAt(t, m, both, bi, 5, ids[6])
	onlyA := ceAt(t, m, with(ids, map[int]int32{5: M}), bi, 4, ids[5])
	onlyB := ceAt(t, m, with(ids, map[int]int32{6: M}), bi, 5, ids[6])
	va, vb := -(2*onlyA+ceBoth)/2, -(2*onlyB+ceBoth)/2
	if math.Abs(got[0]-va) > 1e-5 && math.Abs(got[0]-vb) > 1e-5 {
		t.Fatalf("estimate %.6f is neither %.6f nor %.6f", got[0], va, vb)
	}
}

// Packing many (segment, sample) rows into shared forwards must give the
// same estimates as scoring each segment alone.
func TestChoiceELBOPackingInvariant(t *testing.T) {
	m := loadChoiceModel(t)
	for _, info := range []Info{{MaskID: 3, Shift: true}, {MaskID: 3}, {MaskID: 3, Shift: true, BlockSize: 4}} {
		segs := []model.Segment{
			{Tokens: []int32{1, 5, 6, 7, 8, 9}, Context: 2},
			{Tokens: []int32{1, 20, 21}, Context: 1},
			{Tokens: []int32{1, 30, 31, 32, 33, 34, 35, 36, 37, 38}, Context: 4},
			{Tokens: []int32{1, 12, 13, 14, 15}, Context: 3},
		}
		keys := []uint64{0, 0, 1, 2}
		for _, stratified := range []bool{true, false} {
			opt := ChoiceOptions{MC: 6, Seed: 3, Stratified: stratified, B: 3, L: 24}
			s, err := NewChoiceScorer(m, info, opt)
			if err != nil {
				t.Fatal(err)
			}
			all, err := s.LogLikelihood(append([]model.Segment(nil), segs...), keys)
			s.Free()
			if err != nil {
				t.Fatal(err)
			}
			opt.B, opt.L = 1, 12
			one, err := NewChoiceScorer(m, info, opt)
			if err != nil {
				t.Fatal(err)
			}
			for i := range segs {
				alone, err := one.LogLikelihood([]model.Segment{segs[i]}, keys[i:i+1])
				if err != nil {
					t.Fatal(err)
				}
				if math.Abs(alone[0]-all[i]) > 1e-5*max(1, math.Abs(alone[0])) || all[i] > 0 {
					t.Errorf("%+v stratified=%v segment %d: packed %.6f, alone %.6f", info, stratified, i, all[i], alone[0])
				}
			}
			one.Free()
		}
	}
}

// A block model's samples must be laid out as training lays them out
// (Objective.TwoStream, checked against BD3-LM in PyTorch): for a
// continuation that crosses a block boundary, each sample is rebuilt here
// as a [xt ; x0] batch and scored alone.
func TestChoiceELBOBlockMatchesTwoStream(t *testing.T) {
	m := loadChoiceModel(t)
	const half = 12
	info := Info{MaskID: 3, Shift: true, BlockSize: 4}
	ids := []int32{1, 9, 14, 22, 7, 30, 11, 25, 17}
	seg := model.Segment{Tokens: ids, Context: 6}
	opt := ChoiceOptions{MC: 8, Seed: 5, B: 3, L: half}
	s, err := NewChoiceScorer(m, info, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Free()
	got, err := s.LogLikelihood([]model.Segment{seg}, []uint64{9})
	if err != nil {
		t.Fatal(err)
	}
	o := Objective{MaskID: 3, Shift: true, Weighting: Uniform, Norm: NormMasked, TMin: 1e-3}
	vis := kernels.Visibility{Mode: kernels.BlockDiffusion, Block: 4, Half: half, DocMask: true}
	a := m.NewActivations(1, 2*half, false)
	defer a.Free(m.BE)
	var want float64
	crossed := false
	for _, c := range s.draw(0, seg, 9, nil) {
		b := NewBatch(1, half)
		docs := make([]int32, half)
		for i := range docs {
			if i < len(ids) {
				b.X0[i] = ids[i]
			} else {
				docs[i] = model.PadDoc
			}
		}
		for _, n := range c.masked {
			b.Masked[n] = true
			crossed = crossed || n == 8
		}
		for i := range b.X0 {
			b.XT[i] = b.X0[i]
			if b.Masked[i] {
				b.XT[i] = 3
				b.NMasked++
			}
		}
		o.Score(b)
		o.TwoStream(b, 4, a.IDs, a.Pos, docs, a.Docs, a.ScoreRows(a.T))
		copy(a.Targets, b.Targets[:b.NMasked])
		for k, w := range c.w {
			a.Weights[k] = float32(w)
		}
		a.ScoreRows(b.NMasked)
		if b.NMasked == 0 {
			continue
		}
		a.Upload(m.BE)
		m.Forward(a, vis)
		l, _ := m.Loss(a, 1, false)
		want -= l / float64(opt.MC)
	}
	if !crossed {
		t.Fatal("no sample masked the block's first token; pick another seed")
	}
	if math.Abs(got[0]-want) > 1e-5*max(1, math.Abs(want)) {
		t.Fatalf("block estimate %.6f, two-stream reference %.6f", got[0], want)
	}
}
