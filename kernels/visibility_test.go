package kernels

import (
	"encoding/json"
	"math"
	"os"
	"testing"
)

type hashFixture struct {
	Samples []struct {
		Seed uint64
		I, J int
		U    float64
	}
	AnnealedCount struct {
		L                  int
		Seed               uint64
		Ratio              float64
		VisibleFuturePairs int `json:"visible_future_pairs"`
	} `json:"annealed_count"`
}

// TestHashMatchesPyTorchReference checks Hash01 bit for bit against the
// values the Python reference computes with exact integer arithmetic.
func TestHashMatchesPyTorchReference(t *testing.T) {
	raw, err := os.ReadFile("../testdata/reference/fixtures/engine/hash.json")
	if err != nil {
		t.Fatal(err)
	}
	var f hashFixture
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Samples) < 10 {
		t.Fatalf("only %d samples", len(f.Samples))
	}
	for _, s := range f.Samples {
		if got := Hash01(s.Seed, s.I, s.J); float64(got) != s.U {
			t.Errorf("Hash01(%d, %d, %d) = %v, reference %v", s.Seed, s.I, s.J, got, s.U)
		}
	}
	a := f.AnnealedCount
	vis := Visibility{Mode: Annealed, Ratio: float32(a.Ratio), Seed: a.Seed}
	n := 0
	for i := 0; i < a.L; i++ {
		for j := i + 1; j < a.L; j++ {
			if vis.Visible(i, j) {
				n++
			}
		}
	}
	if n != a.VisibleFuturePairs {
		t.Fatalf("visible future pairs at L=%d: %d, reference %d", a.L, n, a.VisibleFuturePairs)
	}
}

// TestAnnealedLimitsAndFraction: ratio 0 is causal, ratio 1 bidirectional,
// and the visible fraction of future pairs tracks the ratio within 1% at
// L = 512; a new seed draws a different matrix.
func TestAnnealedLimitsAndFraction(t *testing.T) {
	const L = 512
	causal := Visibility{Mode: Causal}
	for _, seed := range []uint64{1, 99} {
		zero := Visibility{Mode: Annealed, Ratio: 0, Seed: seed}
		one := Visibility{Mode: Annealed, Ratio: 1, Seed: seed}
		for i := 0; i < L; i++ {
			for j := 0; j < L; j++ {
				if zero.Visible(i, j) != causal.Visible(i, j) {
					t.Fatalf("ratio 0 differs from causal at (%d,%d)", i, j)
				}
				if !one.Visible(i, j) {
					t.Fatalf("ratio 1 hides (%d,%d)", i, j)
				}
			}
		}
	}
	for _, ratio := range []float32{0.1, 0.3, 0.5, 0.9} {
		a := Visibility{Mode: Annealed, Ratio: ratio, Seed: 12345}
		b := Visibility{Mode: Annealed, Ratio: ratio, Seed: 12346}
		vis, diff, total := 0, 0, 0
		for i := 0; i < L; i++ {
			for j := i + 1; j < L; j++ {
				total++
				if a.Visible(i, j) {
					vis++
				}
				if a.Visible(i, j) != b.Visible(i, j) {
					diff++
				}
			}
		}
		frac := float64(vis) / float64(total)
		if math.Abs(frac-float64(ratio)) > 0.01 {
			t.Errorf("ratio %v: visible fraction %v", ratio, frac)
		}
		if diff == 0 {
			t.Errorf("ratio %v: seeds 12345 and 12346 give the same matrix", ratio)
		}
	}
}

func TestBlockRules(t *testing.T) {
	b := Visibility{Mode: Block, Block: 4}
	if !b.Visible(5, 7) || b.Visible(3, 4) || !b.Visible(4, 0) {
		t.Fatal("block(4) rule")
	}
	for i := 0; i < 20; i++ {
		last := b.MaxVisibleKey(i, 18)
		for j := 0; j < 18; j++ {
			if b.Visible(i, j) && j > last {
				t.Fatalf("MaxVisibleKey(%d) = %d hides visible key %d", i, last, j)
			}
		}
	}
	// Block diffusion, L = 8, block 4: noisy block 1 (positions 4-7) sees
	// noisy 4-7 and clean block 0 (positions 8-11); clean block 1 (12-15)
	// sees clean 8-15 only.
	bd := Visibility{Mode: BlockDiffusion, Block: 4, Half: 8}
	want := func(i, j int) bool {
		switch {
		case i < 8 && j < 8:
			return i/4 == j/4
		case i < 8:
			return (j-8)/4 < i/4
		case j < 8:
			return false
		default:
			return (j-8)/4 <= (i-8)/4
		}
	}
	for i := 0; i < 16; i++ {
		for j := 0; j < 16; j++ {
			if bd.Visible(i, j) != want(i, j) {
				t.Fatalf("block diffusion (%d,%d) = %v", i, j, bd.Visible(i, j))
			}
		}
	}
}
