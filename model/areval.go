package model

import (
	"fmt"
	"math"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/tokenizer"
)

// AREvalOptions shape an AR evaluation.
type AREvalOptions struct {
	SeqLen    int // tokens per document, BOS included (longer ones are cut)
	Batch     int // documents per forward pass
	MaxTokens int // stop after scoring this many tokens (0: all)
}

// AREvalResult is the next-token cross-entropy of a model on documents.
type AREvalResult struct {
	CrossEntropy float64 `json:"cross_entropy"`
	Perplexity   float64 `json:"perplexity"`
	Tokens       int64   `json:"tokens"`
	Documents    int     `json:"documents"`
}

// EvalAR scores each document as BOS + text (truncated to SeqLen tokens)
// with causal attention, Batch documents per forward pass.
func EvalAR(m *Model, tok *tokenizer.Tokenizer, docs []string, o AREvalOptions) (*AREvalResult, error) {
	L, B := o.SeqLen, max(o.Batch, 1)
	if L <= 0 {
		return nil, fmt.Errorf("AR eval: sequence length %d", L)
	}
	a := m.NewActivations(B, L, false)
	defer a.Free(m.BE)
	var sum float64
	var tokens int64
	used := 0
	bos := tok.BOS()
	for start := 0; start < len(docs); start += B {
		a.ScoreAll()
		for i := range a.Targets {
			a.Targets[i], a.Weights[i], a.IDs[i] = -1, 0, 0
		}
		n := min(B, len(docs)-start)
		for r := 0; r < n; r++ {
			var ids []int
			if bos >= 0 {
				ids = append(ids, bos)
			}
			ids = append(ids, tok.Encode(docs[start+r], false)...)
			if len(ids) > L {
				ids = ids[:L]
			}
			if o.MaxTokens > 0 && tokens+int64(len(ids)-1) > int64(o.MaxTokens) {
				ids = ids[:int64(o.MaxTokens)-tokens+1]
			}
			for i, id := range ids {
				a.IDs[r*L+i] = int32(id)
				if i+1 < len(ids) {
					a.Targets[r*L+i], a.Weights[r*L+i] = int32(ids[i+1]), 1
				}
			}
			tokens += int64(max(len(ids)-1, 0))
			used++
		}
		a.Upload(m.BE)
		m.Forward(a, kernels.Visibility{Mode: kernels.Causal})
		s, _ := m.Loss(a, 1, false)
		sum += s
		if err := m.BE.Err(); err != nil {
			return nil, err
		}
		if o.MaxTokens > 0 && tokens >= int64(o.MaxTokens) {
			break
		}
	}
	if tokens == 0 {
		return nil, fmt.Errorf("no tokens to score")
	}
	ce := sum / float64(tokens)
	return &AREvalResult{CrossEntropy: ce, Perplexity: math.Exp(ce), Tokens: tokens, Documents: used}, nil
}
