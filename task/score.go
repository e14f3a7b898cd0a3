package task

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dllm-dev/dllm/model"
)

// Encoder is the part of a tokenizer the pair encoding needs.
type Encoder interface {
	Encode(text string, addSpecial bool) []int
	BOS() int
	EOS() int
}

// EncodePair tokenises (context, continuation) as lm-evaluation-harness
// does: trailing whitespace of the context moves to the continuation, the
// concatenation and the context are encoded separately (with the
// tokenizer's special prefix, BOS for llama), and the continuation is the
// tokens of the whole after as many as the context's encoding has. An
// empty context becomes the BOS (else EOS) token, the harness's prefix.
func EncodePair(tok Encoder, context, continuation string) (ctx, cont []int32, err error) {
	if context == "" {
		p := tok.BOS()
		if p < 0 {
			p = tok.EOS()
		}
		if p < 0 {
			return nil, nil, fmt.Errorf("an empty context needs a BOS or EOS token to condition on")
		}
		return []int32{int32(p)}, to32(tok.Encode(continuation, false)), nil
	}
	trimmed := strings.TrimRightFunc(context, unicode.IsSpace)
	continuation = context[len(trimmed):] + continuation
	context = trimmed
	whole := tok.Encode(context+continuation, true)
	c := tok.Encode(context, true)
	if len(c) >= len(whole) {
		return nil, nil, fmt.Errorf("choice %q encodes to no tokens after the context", continuation)
	}
	return to32(c), to32(whole[len(c):]), nil
}

func to32(x []int) []int32 {
	out := make([]int32, len(x))
	for i, v := range x {
		out[i] = int32(v)
	}
	return out
}

// Scorer gives the log-likelihood (or its ELBO) of each segment's
// continuation; keys seed a diffusion scorer's masks (one key per example,
// so an example's choices share their strata) and an AR scorer ignores
// them.
type Scorer interface {
	LogLikelihood(segs []model.Segment, keys []uint64) ([]float64, error)
}

// ARScorer adapts model.ChoiceScorer.
type ARScorer struct{ *model.ChoiceScorer }

// LogLikelihood ignores the keys: AR scores are exact.
func (s ARScorer) LogLikelihood(segs []model.Segment, _ []uint64) ([]float64, error) {
	return s.ChoiceScorer.LogLikelihood(segs)
}

// ExampleResult is one question's scores.
type ExampleResult struct {
	Scores []float64 `json:"scores"`
	Label  int       `json:"label"`
}

// Result is a multiple-choice task's outcome (the harness's metrics).
type Result struct {
	Accuracy       float64         `json:"accuracy"`
	AccuracyStderr float64         `json:"accuracy_stderr"`
	AccuracyNorm   float64         `json:"accuracy_norm"`
	NormStderr     float64         `json:"accuracy_norm_stderr"`
	N              int             `json:"n"`
	Tokens         int64           `json:"tokens"` // tokens run through the model (every MC sample)
	Seconds        float64         `json:"seconds"`
	TokensPerSec   float64         `json:"tokens_per_second"`
	Examples       []ExampleResult `json:"examples"`
}

// Options controls Run.
type Options struct {
	Delimiter string // between context and choice; the harness's default is " "
	Limit     int    // first K examples (0: all)
	Chunk     int    // examples per Scorer call (their segments share forward passes)
	// Without Chunk, about Budget tokens per call (the scorer's rows per
	// forward times their length), each segment run Copies times (the MC
	// samples of a diffusion scorer).
	Budget, Copies int
	Progress       io.Writer
	Label          string           // shown on the progress line
	Tokens         func() int64     // tokens processed so far, for the progress line
	Now            func() time.Time // tests may fix the clock
}

// Run scores every choice of every example and computes accuracy (argmax
// of the scores), acc_norm (argmax of score / character length of the
// choice, as the harness defines it) and their standard errors.
func Run(t *Task, tok Encoder, sc Scorer, opt Options) (*Result, error) {
	if len(t.Examples) == 0 {
		return nil, fmt.Errorf("the task has no multiple-choice examples (format %s)", t.Format)
	}
	exs := t.Examples
	if opt.Limit > 0 && opt.Limit < len(exs) {
		exs = exs[:opt.Limit]
	}
	if opt.Chunk <= 0 {
		opt.Chunk = 16
		if opt.Budget > 0 {
			n := 0
			for _, c := range exs[0].Choices {
				ctx, cont, _ := EncodePair(tok, exs[0].Context, opt.Delimiter+c)
				n += len(ctx) + len(cont)
			}
			opt.Chunk = max(1, 2*opt.Budget/max(n*max(opt.Copies, 1), 1))
		}
	}
	now := opt.Now
	if now == nil {
		now = time.Now
	}
	type enc struct{ ctx, cont []int32 }
	res := &Result{N: len(exs), Examples: make([]ExampleResult, len(exs))}
	pr := newProgress(opt.Progress, len(exs), opt.Label)
	start := now()
	var hits, hitsNorm []float64
	for lo := 0; lo < len(exs); lo += opt.Chunk {
		hi := min(lo+opt.Chunk, len(exs))
		var segs []model.Segment
		var keys []uint64
		for i := lo; i < hi; i++ {
			for _, c := range exs[i].Choices {
				ctx, cont, err := EncodePair(tok, exs[i].Context, opt.Delimiter+c)
				if err != nil {
					return nil, fmt.Errorf("example %d: %v", i+1, err)
				}
				segs = append(segs, model.Segment{Tokens: append(ctx, cont...), Context: len(ctx)})
				keys = append(keys, uint64(i))
			}
		}
		ll, err := sc.LogLikelihood(segs, keys)
		if err != nil {
			return nil, fmt.Errorf("examples %d-%d: %v", lo+1, hi, err)
		}
		k := 0
		for i := lo; i < hi; i++ {
			ex := exs[i]
			scores := ll[k : k+len(ex.Choices)]
			k += len(ex.Choices)
			norm := make([]float64, len(scores))
			for j, s := range scores {
				norm[j] = s / float64(max(utf8.RuneCountInString(ex.Choices[j]), 1))
			}
			res.Examples[i] = ExampleResult{Scores: append([]float64(nil), scores...), Label: ex.Label}
			hits = append(hits, b2f(argmax(scores) == ex.Label))
			hitsNorm = append(hitsNorm, b2f(argmax(norm) == ex.Label))
		}
		acc, _ := MeanStderr(hits)
		var tokens int64
		if opt.Tokens != nil {
			tokens = opt.Tokens()
		}
		pr.update(hi, acc, tokens, now().Sub(start))
	}
	pr.done()
	res.Accuracy, res.AccuracyStderr = MeanStderr(hits)
	res.AccuracyNorm, res.NormStderr = MeanStderr(hitsNorm)
	res.Seconds = now().Sub(start).Seconds()
	if opt.Tokens != nil {
		res.Tokens = opt.Tokens()
	}
	if res.Seconds > 0 {
		res.TokensPerSec = float64(res.Tokens) / res.Seconds
	}
	return res, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// argmax is numpy's: the first index of the largest value.
func argmax(x []float64) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// MeanStderr is the mean of x and the harness's mean_stderr: the sample
// standard deviation (n-1) over sqrt(n).
func MeanStderr(x []float64) (mean, stderr float64) {
	n := float64(len(x))
	if n == 0 {
		return 0, 0
	}
	for _, v := range x {
		mean += v
	}
	mean /= n
	if n < 2 {
		return mean, 0
	}
	var ss float64
	for _, v := range x {
		ss += (v - mean) * (v - mean)
	}
	return mean, math.Sqrt(ss/(n-1)) / math.Sqrt(n)
}

// Longest is the most tokens any (context, choice) segment of the first
// limit examples (0: all) encodes to: rows need be no longer.
func Longest(t *Task, tok Encoder, delimiter string, limit int) (int, error) {
	exs := t.Examples
	if limit > 0 && limit < len(exs) {
		exs = exs[:limit]
	}
	n := 0
	for i, ex := range exs {
		for _, c := range ex.Choices {
			ctx, cont, err := EncodePair(tok, ex.Context, delimiter+c)
			if err != nil {
				return 0, fmt.Errorf("example %d: %v", i+1, err)
			}
			n = max(n, len(ctx)+len(cont))
		}
	}
	return n, nil
}
