package model

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
)

type choiceCase struct {
	Config   string
	Dir      string
	Segments []struct {
		Tokens        []int32
		Context       int
		Loglikelihood float64
	}
}

// TestChoiceScoresMatchTorch scores the fixture segments packed several to
// a row (document masking, positions restarting) and one per row, and
// compares both with PyTorch's float64 log-likelihoods of each segment
// scored alone.
func TestChoiceScoresMatchTorch(t *testing.T) {
	var f struct{ Cases []choiceCase }
	readJSON(t, "../testdata/reference/fixtures/choice/cases.json", &f)
	if len(f.Cases) == 0 {
		t.Fatal("no choice cases")
	}
	for _, c := range f.Cases {
		t.Run(c.Config, func(t *testing.T) {
			be := cpu.New(2)
			defer be.Close()
			m, err := Load(filepath.Join("../testdata/reference/fixtures", c.Dir), be)
			if err != nil {
				t.Fatal(err)
			}
			segs := func() []Segment {
				var out []Segment
				for _, s := range c.Segments {
					out = append(out, Segment{Tokens: s.Tokens, Context: s.Context})
				}
				return out
			}
			// Rows of 24 hold two or three segments each; two rows per
			// forward, so several forwards. Then one segment per row.
			for _, shape := range [][2]int{{2, 24}, {1, 16}} {
				sc := m.NewChoiceScorer(shape[0], shape[1])
				got, err := sc.LogLikelihood(segs())
				sc.Free()
				if err != nil {
					t.Fatal(err)
				}
				for i, s := range c.Segments {
					if d := math.Abs(got[i] - s.Loglikelihood); d > 2e-5*max(1, math.Abs(s.Loglikelihood)) {
						t.Errorf("rows %dx%d, segment %d: log-likelihood %.7f, torch %.7f", shape[0], shape[1], i, got[i], s.Loglikelihood)
					}
				}
			}
		})
	}
}

func TestPack(t *testing.T) {
	place, rows, err := Pack([]int{5, 3, 4, 8, 1}, 8, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := []Placement{{0, 0}, {1, 0}, {1, 4}, {2, 0}, {3, 0}}
	if rows != 4 {
		t.Errorf("rows %d, want 4", rows)
	}
	for i := range want {
		if place[i] != want[i] {
			t.Errorf("segment %d at %v, want %v", i, place[i], want[i])
		}
	}
	if _, _, err := Pack([]int{9}, 8, 1); err == nil {
		t.Error("a segment longer than a row was packed")
	}
}

func TestTruncate(t *testing.T) {
	s, err := Truncate(Segment{Tokens: []int32{1, 2, 3, 4, 5, 6}, Context: 4}, 4)
	if err != nil || s.Context != 2 || len(s.Tokens) != 4 || s.Tokens[0] != 3 {
		t.Errorf("got %+v, %v", s, err)
	}
	if _, err := Truncate(Segment{Tokens: []int32{1, 2, 3, 4, 5}, Context: 1}, 4); err == nil {
		t.Error("a continuation filling the whole row was accepted")
	}
	if _, err := Truncate(Segment{Tokens: []int32{1, 2}, Context: 0}, 4); err == nil {
		t.Error("a segment without context was accepted")
	}
}
