package corpus

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/dllm-dev/dllm/internal/regfile"
	"github.com/dllm-dev/dllm/tokenizer"
)

// SFT padding of a row after its response.
const (
	PadEOS  = "eos"  // EOS tokens, maskable and scored (LLaDA): the model learns where to stop
	PadNone = "none" // EOS tokens that are never masked or scored, in a document of their own
)

// SFTOptions says how to read instruction data.
type SFTOptions struct {
	Paths        []string // JSONL files (or folders of them)
	EvalPaths    []string
	EvalFraction float64 // the last fraction of the lines (whole conversations) becomes eval
	SeqLen       int
	// Template renders "messages" rows; nil when the model has none (then
	// only prompt/completion rows are accepted). TemplateHint names where a
	// template was looked for, for the error message.
	Template     *tokenizer.ChatTemplate
	TemplateHint string
	Pad          string // PadEOS (default) or PadNone
	Stop         func() error
}

// SFTStats describes the instruction data Load read.
type SFTStats struct {
	Lines          int    `json:"lines"`           // conversations / prompt-completion pairs
	Examples       int    `json:"examples"`        // rows: one per assistant turn
	CutRows        int    `json:"cut_rows"`        // rows longer than seq-len, cut at seq-len
	CutTokens      int64  `json:"cut_tokens"`      // tokens those cuts dropped
	DroppedRows    int    `json:"dropped_rows"`    // rows whose prompt alone fills seq-len (no response left)
	PromptTokens   int64  `json:"prompt_tokens"`   // never masked, never scored
	ResponseTokens int64  `json:"response_tokens"` // targets
	PadTokens      int64  `json:"pad_tokens"`
	Pad            string `json:"pad"`
	EndOfTurn      string `json:"end_of_turn,omitempty"`
}

// sftExample is one row before padding: prompt ids (clean context) and
// response ids (targets).
type sftExample struct {
	prompt, response []int
}

// LoadSFT reads instruction data: JSONL rows with "messages" (roles system,
// user, assistant; rendered with the chat template) or with "prompt" and
// "completion" (BOS + prompt + completion + EOS, no template). Each
// assistant turn becomes one row of SeqLen tokens: the conversation before
// it, rendered with the generation prompt, is the prompt (never masked,
// never scored); the turn up to and including the template's end-of-turn
// (EOS when the template has none) is the response; the rest is padding
// (see PadEOS, PadNone). Rows are not packed.
func LoadSFT(tok *tokenizer.Tokenizer, opt SFTOptions) (*Corpus, error) {
	if tok == nil {
		return nil, fmt.Errorf("corpus: no tokenizer")
	}
	if opt.SeqLen < 2 {
		return nil, dataErrorf("corpus: sequence length %d is too short", opt.SeqLen)
	}
	if len(opt.Paths) == 0 {
		return nil, dataErrorf("corpus: no training data given")
	}
	if opt.EvalFraction < 0 || opt.EvalFraction >= 1 || math.IsNaN(opt.EvalFraction) {
		return nil, dataErrorf("corpus: eval fraction %g is not in [0, 1)", opt.EvalFraction)
	}
	switch opt.Pad {
	case "":
		opt.Pad = PadEOS
	case PadEOS, PadNone:
	default:
		return nil, dataErrorf("corpus: unknown SFT padding %q (want eos or none)", opt.Pad)
	}
	if tok.EOS() < 0 {
		return nil, dataErrorf("corpus: SFT rows end with EOS, but the tokenizer has none")
	}
	st := &SFTStats{Pad: opt.Pad}
	if opt.Template != nil {
		st.EndOfTurn = opt.Template.EndOfTurn()
	}
	s := &sftReader{tok: tok, opt: &opt, stats: st}
	train, err := s.read(opt.Paths)
	if err != nil {
		return nil, err
	}
	if len(train) == 0 {
		return nil, dataErrorf("corpus: no SFT rows in %v", opt.Paths)
	}
	var eval [][]sftExample
	switch {
	case len(opt.EvalPaths) > 0:
		if eval, err = s.read(opt.EvalPaths); err != nil {
			return nil, err
		}
		if len(eval) == 0 {
			return nil, dataErrorf("corpus: no SFT rows in the eval data %v", opt.EvalPaths)
		}
	case opt.EvalFraction > 0:
		n := len(train)
		if n < 2 {
			return nil, dataErrorf("corpus: an eval fraction needs at least 2 conversations, the data has %d", n)
		}
		k := min(max(int(math.Round(opt.EvalFraction*float64(n))), 1), n-1)
		train, eval = train[:n-k], train[n-k:]
	}
	c := &Corpus{}
	var trainDocs, evalDocs int
	if c.Train, trainDocs = s.split(train); c.Train.rows == 0 {
		return nil, dataErrorf("corpus: no SFT row of %v keeps a response token within --seq-len %d", opt.Paths, opt.SeqLen)
	}
	if eval != nil {
		if c.Eval, evalDocs = s.split(eval); c.Eval.rows == 0 {
			return nil, dataErrorf("corpus: no held-out SFT row keeps a response token within --seq-len %d", opt.SeqLen)
		}
	}
	c.Stats = Stats{
		Files: s.files, Bytes: s.bytes, Documents: trainDocs + evalDocs, TrainDocuments: trainDocs, EvalDocuments: evalDocs,
		TrainTokens: int64(len(c.Train.tokens)), TrainRows: c.Train.rows, EvalRows: c.Eval.Rows(),
		SeqLen: opt.SeqLen, BOS: tok.BOS(), EOS: tok.EOS(), SFT: st,
	}
	if c.Eval != nil {
		c.Stats.EvalTokens = int64(len(c.Eval.tokens))
	}
	return c, nil
}

type sftReader struct {
	tok          *tokenizer.Tokenizer
	opt          *SFTOptions
	stats        *SFTStats
	files        int
	bytes        int64
	lastPath     string
	lastLine     int
	lastTemplate string
}

// read returns the examples of every line, grouped by line.
func (s *sftReader) read(paths []string) ([][]sftExample, error) {
	files, err := listFiles(paths)
	if err != nil {
		return nil, err
	}
	var out [][]sftExample
	for _, f := range files {
		if s.opt.Stop != nil {
			if err := s.opt.Stop(); err != nil {
				return nil, err
			}
		}
		if f.kind != "jsonl" {
			return nil, dataErrorf("corpus: %s: SFT data is JSONL (.jsonl or .json) with \"messages\" or \"prompt\"+\"completion\" per line", f.path)
		}
		data, err := regfile.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("corpus: %v", err)
		}
		if err := checkUTF8(f.path, data); err != nil {
			return nil, err
		}
		s.files++
		s.bytes += int64(len(data))
		text := string(data)
		for line := 1; len(text) > 0; line++ {
			var l string
			if i := strings.IndexByte(text, '\n'); i >= 0 {
				l, text = text[:i], text[i+1:]
			} else {
				l, text = text, ""
			}
			if strings.TrimSpace(l) == "" {
				continue
			}
			ex, err := s.line(l)
			if err != nil {
				return nil, dataErrorf("corpus: %s:%d: %w", f.path, line, err)
			}
			out = append(out, ex)
			s.stats.Lines++
		}
	}
	return out, nil
}

// ErrNoChatTemplate is in LoadSFT's refusal of a "messages" row when
// SFTOptions has no Template: bad input, that a template fixes.
var ErrNoChatTemplate = errors.New("a \"messages\" row needs a chat template")

// SFTRoles are the roles a "messages" row may use.
var SFTRoles = []string{"system", "user", "assistant"}

func (s *sftReader) line(l string) ([]sftExample, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(l), &obj); err != nil {
		return nil, fmt.Errorf("not a JSON object: %v", err)
	}
	if raw, ok := obj["messages"]; ok {
		var list []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("\"messages\" is not a list of {\"role\", \"content\"} objects")
		}
		msgs, err := tokenizer.MessagesFromJSON(list)
		if err != nil {
			return nil, err
		}
		return s.conversation(msgs)
	}
	p, okP := obj["prompt"]
	c, okC := obj["completion"]
	if !okP || !okC {
		return nil, fmt.Errorf("an SFT row needs \"messages\" or both \"prompt\" and \"completion\"")
	}
	var prompt, completion string
	if json.Unmarshal(p, &prompt) != nil || json.Unmarshal(c, &completion) != nil {
		return nil, fmt.Errorf("\"prompt\" and \"completion\" must be strings")
	}
	if completion == "" {
		return nil, fmt.Errorf("empty \"completion\": nothing to train on")
	}
	var ex sftExample
	if s.tok.BOS() >= 0 {
		ex.prompt = append(ex.prompt, s.tok.BOS())
	}
	ex.prompt = append(ex.prompt, s.tok.Encode(prompt, false)...)
	ex.response = append(s.tok.Encode(completion, false), s.tok.EOS())
	return []sftExample{ex}, nil
}

// conversation makes one example per assistant turn: the messages before
// it rendered with the generation prompt, then the turn as the template
// renders it, cut after the end-of-turn.
func (s *sftReader) conversation(msgs []tokenizer.Message) ([]sftExample, error) {
	ct := s.opt.Template
	if ct == nil {
		where := s.opt.TemplateHint
		if where == "" {
			where = "the model"
		}
		return nil, fmt.Errorf("%w and %s has none: pass --chat-template FILE (a Jinja file), or give \"prompt\"+\"completion\" rows", ErrNoChatTemplate, where)
	}
	for i, m := range msgs {
		known := false
		for _, r := range SFTRoles {
			known = known || m.Role == r
		}
		if !known {
			return nil, fmt.Errorf("message %d has unknown role %q (want system, user or assistant)", i+1, m.Role)
		}
	}
	eot := ct.EndOfTurn()
	var out []sftExample
	for i, m := range msgs {
		if m.Role != "assistant" {
			continue
		}
		if i == 0 {
			return nil, fmt.Errorf("message 1 is an assistant turn with nothing before it to answer")
		}
		prompt, err := ct.Render(msgs[:i], true)
		if err != nil {
			return nil, err
		}
		full, err := ct.Render(msgs[:i+1], false)
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(full, prompt) {
			return nil, fmt.Errorf("the chat template does not render message %d after the generation prompt of the messages before it, so the response cannot be told from the prompt", i+1)
		}
		// The turn ends at the first end-of-turn after its content; what
		// follows (e.g. a template that always opens the next assistant
		// header) is not part of it.
		resp, ended := full[len(prompt):], false
		if eot != "" {
			j := 0
			if k := strings.Index(resp, m.Content); k >= 0 {
				j = k + len(m.Content)
			}
			if k := strings.Index(resp[j:], eot); k >= 0 {
				resp, ended = resp[:j+k+len(eot)], true
			}
		}
		ex := sftExample{prompt: s.tok.Encode(prompt, false), response: s.tok.Encode(resp, false)}
		if !ended {
			ex.response = append(ex.response, s.tok.EOS())
		}
		out = append(out, ex)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the conversation has no assistant turn to train on")
	}
	return out, nil
}

// split lays the examples out one per row and returns it with the number
// of documents (lines).
func (s *sftReader) split(lines [][]sftExample) (*Split, int) {
	L := s.opt.SeqLen
	eos := int32(s.tok.EOS())
	sp := &Split{seqLen: L, bos: -1, permEpoch: -1}
	for _, exs := range lines {
		for _, ex := range exs {
			s.stats.Examples++
			n := len(ex.prompt) + len(ex.response)
			if n > L {
				s.stats.CutRows++
				s.stats.CutTokens += int64(n - L)
			}
			if len(ex.prompt) >= L {
				s.stats.DroppedRows++
				continue
			}
			base := int64(len(sp.tokens))
			sp.starts = append(sp.starts, base)
			for _, id := range ex.prompt {
				sp.tokens = append(sp.tokens, int32(id))
				sp.fixed = append(sp.fixed, true)
			}
			r := ex.response[:min(len(ex.response), L-len(ex.prompt))]
			for _, id := range r {
				sp.tokens = append(sp.tokens, int32(id))
				sp.fixed = append(sp.fixed, false)
			}
			s.stats.PromptTokens += int64(len(ex.prompt))
			s.stats.ResponseTokens += int64(len(r))
			pad := L - len(ex.prompt) - len(r)
			if pad > 0 && s.opt.Pad == PadNone {
				sp.starts = append(sp.starts, int64(len(sp.tokens)))
			}
			for k := 0; k < pad; k++ {
				sp.tokens = append(sp.tokens, eos)
				sp.fixed = append(sp.fixed, s.opt.Pad == PadNone)
			}
			s.stats.PadTokens += int64(pad)
			sp.rows++
		}
	}
	return sp, len(lines)
}
