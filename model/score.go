package model

import (
	"fmt"

	"github.com/dllm-dev/dllm/kernels"
)

// Segment is a context followed by a continuation: the tokens
// Tokens[Context:] are the ones scored.
type Segment struct {
	Tokens  []int32
	Context int
}

// PadDoc is the document id of padding in packed rows: no segment uses it.
const PadDoc = int32(1 << 30)

// Placement is where Pack put a segment: row and start offset.
type Placement struct{ Row, Off int }

// Pack lays segments of the given lengths end to end into rows of L
// positions, each starting at a multiple of align (next fit, in order), so
// that with document masking they are scored as if each were alone. It
// returns the placements and the number of rows.
func Pack(lens []int, L, align int) ([]Placement, int, error) {
	align = max(align, 1)
	out := make([]Placement, len(lens))
	row, off := 0, 0
	for i, n := range lens {
		if n > L {
			return nil, 0, fmt.Errorf("score: a segment of %d tokens does not fit rows of %d", n, L)
		}
		if off+n > L {
			row, off = row+1, 0
		}
		out[i] = Placement{row, off}
		off += (n + align - 1) / align * align
	}
	if len(lens) == 0 {
		return out, 0, nil
	}
	return out, row + 1, nil
}

// ChoiceScorer computes the exact log-likelihood of continuations under
// causal attention, many segments per forward pass: segments are packed
// into B rows of L positions, separated by document masking, with positions
// restarting at 0 in every segment.
type ChoiceScorer struct {
	m    *Model
	a    *Activations
	B, L int
	// Tokens counts the segment tokens run through the model so far.
	Tokens int64
}

// NewChoiceScorer allocates buffers for B rows of L tokens.
func (m *Model) NewChoiceScorer(B, L int) *ChoiceScorer {
	return &ChoiceScorer{m: m, a: m.NewActivations(B, L, false), B: B, L: L}
}

// Free returns the buffers.
func (s *ChoiceScorer) Free() { s.a.Free(s.m.BE) }

// Truncate keeps the last L tokens of a segment (dropping context from the
// left, as lm-evaluation-harness does) and refuses a continuation that
// leaves no context token before it.
func Truncate(seg Segment, L int) (Segment, error) {
	if seg.Context < 1 {
		return seg, fmt.Errorf("score: a continuation needs at least one context token (BOS) before it")
	}
	cont := len(seg.Tokens) - seg.Context
	if cont+1 > L {
		return seg, fmt.Errorf("score: a continuation of %d tokens does not fit rows of %d (raise --seq-len)", cont, L)
	}
	if cut := len(seg.Tokens) - L; cut > 0 {
		seg = Segment{Tokens: seg.Tokens[cut:], Context: seg.Context - cut}
	}
	return seg, nil
}

// LogLikelihood returns sum over continuation tokens of log p(token |
// everything before it) for each segment.
func (s *ChoiceScorer) LogLikelihood(segs []Segment) ([]float64, error) {
	lens := make([]int, len(segs))
	for i := range segs {
		t, err := Truncate(segs[i], s.L)
		if err != nil {
			return nil, err
		}
		segs[i] = t
		lens[i] = len(t.Tokens)
	}
	place, nRows, err := Pack(lens, s.L, 1)
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(segs))
	a, L := s.a, s.L
	vis := kernels.Visibility{Mode: kernels.Causal, DocMask: true}
	for r0, i0 := 0, 0; r0 < nRows; r0 += s.B {
		for i := range a.IDs {
			a.IDs[i], a.Pos[i], a.Docs[i] = 0, 0, PadDoc
		}
		a.ScoreRows(a.T)
		owner := make([]int32, 0, a.T)
		k := 0
		i := i0
		for ; i < len(segs) && place[i].Row < r0+s.B; i++ {
			seg, p := segs[i], place[i]
			base := (p.Row-r0)*L + p.Off
			for j, t := range seg.Tokens {
				a.IDs[base+j], a.Pos[base+j], a.Docs[base+j] = t, int32(j), int32(i)
			}
			for j := seg.Context; j < len(seg.Tokens); j++ {
				a.Rows[k], a.Targets[k], a.Weights[k] = int32(base+j-1), seg.Tokens[j], 1
				owner = append(owner, int32(i))
				k++
			}
			s.Tokens += int64(len(seg.Tokens))
		}
		a.ScoreRows(k)
		a.Upload(s.m.BE)
		s.m.Forward(a, vis)
		s.m.Loss(a, 1, false)
		if err := s.m.BE.Err(); err != nil {
			return nil, err
		}
		for j, ce := range a.RowLosses() {
			out[owner[j]] -= float64(ce)
		}
		i0 = i
	}
	return out, nil
}

// RowsCrossEntropy is the next-token cross-entropy of packed rows (as
// convert's eval split serves them) under causal attention: positions 1..L-1
// of each row are scored, the positions the shifted diffusion NELBO scores,
// so the two are per-token comparable. It returns the summed loss and the
// number of tokens.
func (m *Model) RowsCrossEntropy(row func(i int, ids, docs []int32), nRows, L, B int, docMask bool) (float64, int64, error) {
	B = min(max(B, 1), nRows)
	a := m.NewActivations(B, L, false)
	defer a.Free(m.BE)
	vis := kernels.Visibility{Mode: kernels.Causal, DocMask: docMask}
	var sum float64
	var n int64
	for start := 0; start < nRows; start += B {
		a.ScoreRows(a.T)
		k := 0
		for r := 0; r < B; r++ {
			ids, docs := a.IDs[r*L:(r+1)*L], a.Docs[r*L:(r+1)*L]
			if start+r >= nRows {
				for i := range ids {
					ids[i], docs[i] = 0, 0
				}
				continue
			}
			row(start+r, ids, docs)
			for i := 1; i < L; i++ {
				a.Rows[k], a.Targets[k], a.Weights[k] = int32(r*L+i-1), ids[i], 1
				k++
			}
		}
		a.ScoreRows(k)
		a.Upload(m.BE)
		m.Forward(a, vis)
		s, _ := m.Loss(a, 1, false)
		if err := m.BE.Err(); err != nil {
			return 0, 0, err
		}
		sum += s
		n += int64(k)
	}
	return sum, n, nil
}
