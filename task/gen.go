package task

import (
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strings"
	"time"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
)

// DefaultExtract is GSM8K's strict match in lm-evaluation-harness.
const DefaultExtract = `#### (\-?[0-9\.\,]+)`

// Generator decodes a continuation of prompt.
type Generator func(prompt []int32) ([]int32, error)

// TextCodec is the part of a tokenizer generation tasks need.
type TextCodec interface {
	Encoder
	Decode(ids []int, skipSpecial bool) string
}

// GenOptions controls RunGen.
type GenOptions struct {
	Extract  *regexp.Regexp // applied to the generation; nil: DefaultExtract
	Until    []string       // cut the generation at the first of these
	Limit    int
	Progress io.Writer
	Label    string
	// Prompt turns an example's prompt into model input text (a chat
	// template); nil encodes the prompt as it is, with the tokenizer's
	// special prefix.
	Prompt func(string) ([]int32, error)
}

// GenExampleResult is one generation question's outcome.
type GenExampleResult struct {
	Generation string `json:"generation"`
	Extracted  string `json:"extracted"`
	Answer     string `json:"answer"`
	Correct    bool   `json:"correct"`
}

// GenResult is a generation task's outcome.
type GenResult struct {
	ExactMatch   float64            `json:"exact_match"`
	Stderr       float64            `json:"exact_match_stderr"`
	N            int                `json:"n"`
	Tokens       int64              `json:"tokens"` // generated tokens
	Seconds      float64            `json:"seconds"`
	TokensPerSec float64            `json:"tokens_per_second"`
	Examples     []GenExampleResult `json:"examples"`
}

// gsm8kIgnore are the harness's regexes_to_ignore for GSM8K's exact match,
// applied to prediction and answer alike.
var gsm8kIgnore = []*regexp.Regexp{regexp.MustCompile(`,`), regexp.MustCompile(`\$`),
	regexp.MustCompile(`(?s).*#### `), regexp.MustCompile(`\.$`)}

// Normalize is the harness's exact-match normalisation for GSM8K: commas,
// dollar signs, everything up to "#### " and a final period removed, case
// ignored, surrounding space trimmed.
func Normalize(s string) string {
	for _, re := range gsm8kIgnore {
		s = re.ReplaceAllString(s, "")
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// Extract returns the first match's first group (the whole match when the
// pattern has no group), or "[invalid]" as the harness's filter does.
func Extract(re *regexp.Regexp, s string) string {
	m := re.FindStringSubmatch(s)
	switch {
	case m == nil:
		return "[invalid]"
	case len(m) > 1:
		return m[1]
	}
	return m[0]
}

// RunGen generates an answer for every prompt and scores exact match.
func RunGen(t *Task, tok TextCodec, gen Generator, opt GenOptions) (*GenResult, error) {
	exs, err := opt.examples(t)
	if err != nil {
		return nil, err
	}
	re := opt.Extract
	if re == nil {
		re = regexp.MustCompile(DefaultExtract)
	}
	res := &GenResult{N: len(exs)}
	pr := newProgress(opt.Progress, len(exs), opt.Label)
	start := time.Now()
	var hits []float64
	for i, ex := range exs {
		prompt, err := opt.encode(tok, ex.Prompt)
		if err != nil {
			return nil, fmt.Errorf("example %d: %v", i+1, err)
		}
		out, err := gen(prompt)
		if err != nil {
			return nil, fmt.Errorf("example %d: %v", i+1, err)
		}
		res.Tokens += int64(len(out))
		ids := make([]int, len(out))
		for j, v := range out {
			ids[j] = int(v)
		}
		text := tok.Decode(ids, true)
		for _, u := range opt.Until {
			if k := strings.Index(text, u); u != "" && k >= 0 {
				text = text[:k]
			}
		}
		got := Extract(re, text)
		ok := Normalize(got) == Normalize(ex.Answer)
		res.Examples = append(res.Examples, GenExampleResult{Generation: text, Extracted: got, Answer: ex.Answer, Correct: ok})
		hits = append(hits, b2f(ok))
		acc, _ := MeanStderr(hits)
		pr.update(i+1, acc, res.Tokens, time.Since(start))
	}
	pr.done()
	res.ExactMatch, res.Stderr = MeanStderr(hits)
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.TokensPerSec = float64(res.Tokens) / res.Seconds
	}
	return res, nil
}

// LongestPrompt is the length in tokens of the longest prompt RunGen
// gives the generator with opt (the first opt.Limit examples).
func LongestPrompt(t *Task, tok Encoder, opt GenOptions) (int, error) {
	exs, err := opt.examples(t)
	if err != nil {
		return 0, err
	}
	n := 0
	for i, ex := range exs {
		p, err := opt.encode(tok, ex.Prompt)
		if err != nil {
			return 0, fmt.Errorf("example %d: %v", i+1, err)
		}
		n = max(n, len(p))
	}
	return n, nil
}

// examples are the generation examples opt runs.
func (opt GenOptions) examples(t *Task) ([]GenExample, error) {
	if len(t.Gen) == 0 {
		return nil, fmt.Errorf("the task has no generation examples (format %s)", t.Format)
	}
	exs := t.Gen
	if opt.Limit > 0 && opt.Limit < len(exs) {
		exs = exs[:opt.Limit]
	}
	return exs, nil
}

// encode is the generator's input for an example's prompt.
func (opt GenOptions) encode(tok Encoder, prompt string) ([]int32, error) {
	if opt.Prompt != nil {
		return opt.Prompt(prompt)
	}
	return to32(tok.Encode(prompt, true)), nil
}

// ARGenerator decodes with the model's KV cache, left to right, stopping
// at an EOS token.
func ARGenerator(m *model.Model, genLen int, s model.Sampling, seed uint64, eos []int32) Generator {
	n := uint64(0)
	return func(prompt []int32) ([]int32, error) {
		g := m.NewARGenerator(len(prompt), len(prompt)+genLen)
		defer g.Free()
		smp := &model.Sampler{S: s, Rng: rand.New(rand.NewPCG(seed, n))}
		n++
		out, err := g.Generate(prompt, genLen, smp, func(t int32) bool { return isIn(t, eos) })
		if len(out) > 0 && isIn(out[len(out)-1], eos) {
			out = out[:len(out)-1]
		}
		return out, err
	}
}

// DiffusionGenerator decodes with the diffusion sampler (opt as `dllm
// generate` takes it), stopping at EOS; positions left masked are dropped.
func DiffusionGenerator(m *model.Model, info diffusion.Info, opt diffusion.GenOptions) Generator {
	opt.Batch, opt.StopAtEOS = 1, true
	return func(prompt []int32) ([]int32, error) {
		s, err := diffusion.NewSampler(m, info, opt)
		if err != nil {
			return nil, err
		}
		defer s.Free()
		opt.Seed++
		r, err := s.Generate(prompt)
		if err != nil {
			return nil, err
		}
		var out []int32
		for _, t := range r.Tokens[0] {
			if t != info.MaskID {
				out = append(out, t)
			}
		}
		return out, nil
	}
}

func isIn(t int32, xs []int32) bool {
	for _, x := range xs {
		if x == t {
			return true
		}
	}
	return false
}
