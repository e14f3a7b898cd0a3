package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/dllm-dev/dllm/diffusion"
)

// request is the body of /v1/completions and /v1/chat/completions: OpenAI's
// fields, then the diffusion sampler's as extra fields. Pointers tell an
// absent field (the model's default) from a zero one.
type request struct {
	Model               string          `json:"model"`
	Prompt              json.RawMessage `json:"prompt"`
	Messages            json.RawMessage `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	TopK                *int            `json:"top_k"`
	Seed                *int64          `json:"seed"`
	Stop                json.RawMessage `json:"stop"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Echo     bool            `json:"echo"`
	Logprobs json.RawMessage `json:"logprobs"`
	BestOf   *int            `json:"best_of"`
	Suffix   *string         `json:"suffix"`
	Tools    json.RawMessage `json:"tools"`

	Steps          *int     `json:"steps"`
	BlockLength    *int     `json:"block_length"`
	Alg            *string  `json:"alg"`
	AlgTemp        *float64 `json:"alg_temp"`
	Threshold      *float64 `json:"threshold"`
	StopAtEOS      *bool    `json:"stop_at_eos"`
	ReturnTokenIDs bool     `json:"return_token_ids"`
	Partial        bool     `json:"dllm_partial"`
}

// apiError is an OpenAI-style error: {"error": {"message", "type", "param",
// "code"}} with an HTTP status.
type apiError struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

func badRequest(param, format string, a ...any) *apiError {
	e := &apiError{Status: http.StatusBadRequest, Message: fmt.Sprintf(format, a...), Type: "invalid_request_error"}
	if param != "" {
		e.Param = &param
	}
	return e
}

func errorWith(status int, typ, code, format string, a ...any) *apiError {
	e := &apiError{Status: status, Message: fmt.Sprintf(format, a...), Type: typ}
	if code != "" {
		e.Code = &code
	}
	return e
}

// decodeRequest reads a JSON body into a request: malformed JSON, a known
// field of the wrong type and trailing data are 400s, a body over the limit
// a 413. Unknown fields are ignored, as OpenAI clients send many.
func decodeRequest(r *http.Request, limit int64) (*request, *apiError) {
	body := http.MaxBytesReader(nil, r.Body, limit)
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(body); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, errorWith(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
				"the request body is over the server's limit of %d bytes", limit)
		}
		return nil, badRequest("", "reading the request body: %v", err)
	}
	var req request
	dec := json.NewDecoder(&buf)
	if err := dec.Decode(&req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, badRequest(te.Field, "%s must be %s, not a JSON %s", te.Field, jsonKind(te.Type.String()), te.Value)
		}
		return nil, badRequest("", "the request body is not valid JSON: %v", err)
	}
	if dec.More() {
		return nil, badRequest("", "the request body holds more than one JSON value")
	}
	return &req, nil
}

func jsonKind(goType string) string {
	switch {
	case strings.Contains(goType, "int"):
		return "an integer"
	case strings.Contains(goType, "float"):
		return "a number"
	case strings.Contains(goType, "bool"):
		return "a boolean"
	case strings.Contains(goType, "string"):
		return "a string"
	}
	return "of another type"
}

// prompt is what a request asks to continue: text or token ids.
type prompt struct {
	text string
	ids  []int32
	isID bool
}

// parsePrompt accepts a string, a one-string array, or an array of token
// ids.
func parsePrompt(raw json.RawMessage) (prompt, *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return prompt{}, badRequest("prompt", "prompt is required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return prompt{text: s}, nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		if len(ss) != 1 {
			return prompt{}, badRequest("prompt", "prompt holds %d strings: send one prompt per request (n asks for several samples)", len(ss))
		}
		return prompt{text: ss[0]}, nil
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil {
		p := prompt{isID: true, ids: make([]int32, len(ids))}
		for i, v := range ids {
			if v < 0 || v > math.MaxInt32 {
				return prompt{}, badRequest("prompt", "prompt token %d is negative or too large", v)
			}
			p.ids[i] = int32(v)
		}
		return p, nil
	}
	return prompt{}, badRequest("prompt", "prompt must be a string, an array of one string, or an array of token ids")
}

// parseStop accepts null, a string or an array of up to 4 strings.
func parseStop(raw json.RawMessage) ([]string, *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, nil
		}
		return []string{s}, nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) != nil {
		return nil, badRequest("stop", "stop must be a string or an array of strings")
	}
	if len(ss) > 4 {
		return nil, badRequest("stop", "stop holds %d sequences, at most 4 are allowed", len(ss))
	}
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

// maxTokens is the request's max_tokens (chat: max_completion_tokens
// first); nil when it gives none.
func (r *request) maxTokens(chat bool) *int {
	if chat && r.MaxCompletionTokens != nil {
		return r.MaxCompletionTokens
	}
	return r.MaxTokens
}

// maxN is the most samples one request may ask for.
const maxN = 64

// settings turns a request into sampler options over the model's defaults
// (the same defaults `dllm generate` uses), the sample count and the seed.
func (s *Server) settings(req *request, chat bool) (diffusion.GenOptions, int, uint64, *apiError) {
	o := s.defaults
	o.EOS = s.eos
	o.StopAtEOS = true
	n, seed := 1, uint64(0)
	maxTok := req.maxTokens(chat)
	switch {
	case req.Logprobs != nil && string(req.Logprobs) != "null" && string(req.Logprobs) != "false":
		return o, 0, 0, badRequest("logprobs", "logprobs are not supported by diffusion sampling")
	case req.BestOf != nil && *req.BestOf != 1:
		return o, 0, 0, badRequest("best_of", "best_of is not supported (use n)")
	case req.Suffix != nil && *req.Suffix != "":
		return o, 0, 0, badRequest("suffix", "suffix is not supported")
	case len(req.Tools) > 0 && string(req.Tools) != "null" && string(req.Tools) != "[]":
		return o, 0, 0, badRequest("tools", "tools are not supported")
	}
	if maxTok != nil {
		if *maxTok < 1 {
			return o, 0, 0, badRequest("max_tokens", "max_tokens must be at least 1, got %d", *maxTok)
		}
		o.GenLen = *maxTok
		if s.cfg.MaxTokens > 0 && o.GenLen > s.cfg.MaxTokens {
			return o, 0, 0, badRequest("max_tokens", "max_tokens %d is over this server's limit of %d", o.GenLen, s.cfg.MaxTokens)
		}
	} else if s.cfg.MaxTokens > 0 {
		o.GenLen = min(o.GenLen, s.cfg.MaxTokens) // the model's default, within the limit
	}
	if req.Temperature != nil {
		if *req.Temperature < 0 || *req.Temperature > 2 {
			return o, 0, 0, badRequest("temperature", "temperature must be in [0, 2], got %g", *req.Temperature)
		}
		o.Temperature = *req.Temperature
	}
	if req.TopP != nil {
		if *req.TopP <= 0 || *req.TopP > 1 {
			return o, 0, 0, badRequest("top_p", "top_p must be in (0, 1], got %g", *req.TopP)
		}
		o.TopP = *req.TopP
	}
	if req.TopK != nil {
		if *req.TopK < 0 {
			return o, 0, 0, badRequest("top_k", "top_k must not be negative, got %d", *req.TopK)
		}
		o.TopK = *req.TopK
	}
	if req.Seed != nil {
		if *req.Seed < 0 {
			return o, 0, 0, badRequest("seed", "seed must not be negative, got %d", *req.Seed)
		}
		seed = uint64(*req.Seed)
	}
	if req.N != nil {
		if *req.N < 1 || *req.N > maxN {
			return o, 0, 0, badRequest("n", "n must be between 1 and %d, got %d", maxN, *req.N)
		}
		n = *req.N
	}
	if req.Steps != nil {
		if *req.Steps < 1 {
			return o, 0, 0, badRequest("steps", "steps must be at least 1, got %d", *req.Steps)
		}
		o.Steps = *req.Steps
	}
	if req.BlockLength != nil {
		if *req.BlockLength < 0 {
			return o, 0, 0, badRequest("block_length", "block_length must not be negative, got %d", *req.BlockLength)
		}
		o.BlockLen = *req.BlockLength
	}
	if req.Alg != nil {
		switch a := diffusion.Alg(*req.Alg); a {
		case diffusion.AlgConfidence, diffusion.AlgMargin, diffusion.AlgEntropy, diffusion.AlgRandom:
			o.Alg = a
		default:
			return o, 0, 0, badRequest("alg", "alg must be confidence, margin, entropy or random, got %q", *req.Alg)
		}
	}
	if req.AlgTemp != nil {
		if *req.AlgTemp < 0 {
			return o, 0, 0, badRequest("alg_temp", "alg_temp must not be negative, got %g", *req.AlgTemp)
		}
		o.AlgTemp = *req.AlgTemp
	}
	if req.Threshold != nil {
		if *req.Threshold < 0 || *req.Threshold >= 1 {
			return o, 0, 0, badRequest("threshold", "threshold must be in [0, 1), got %g", *req.Threshold)
		}
		o.Threshold = *req.Threshold
	}
	if req.StopAtEOS != nil {
		o.StopAtEOS = *req.StopAtEOS
	}
	o.Seed, o.Batch = seed, n
	return o, n, seed, nil
}

// Responses, as OpenAI's API returns them.

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type choice struct {
	Index        int          `json:"index"`
	Text         *string      `json:"text,omitempty"`
	Message      *chatMessage `json:"message,omitempty"`
	Delta        *chatMessage `json:"delta,omitempty"`
	Logprobs     any          `json:"logprobs"`
	FinishReason *string      `json:"finish_reason"`
	TokenIDs     any          `json:"token_ids,omitempty"`
	// Partial is the whole sequence after a step (dllm_partial streams).
	Partial *string `json:"dllm_partial,omitempty"`
}

type chatMessage struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type completion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   *usage   `json:"usage,omitempty"`
	// PromptTokenIDs is sent with return_token_ids (as vLLM does).
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"`
	// DLLM is the sampler's account: steps and forward passes of the batch
	// the request ran in, and its rows.
	DLLM *dllmInfo `json:"dllm,omitempty"`
}

type dllmInfo struct {
	Steps     int `json:"steps"`
	Forward   int `json:"forward_passes"`
	BatchRows int `json:"batch_rows"`
}
