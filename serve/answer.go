package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"
)

// answer turns a job's rows into OpenAI responses: text cut at stop
// sequences, and for a stream the new text of every finished block.
type answer struct {
	s       *Server
	chat    bool
	echo    bool
	n       int
	prompt  []int32
	genLen  int
	stops   []string
	ids     bool
	id      string
	created int64
	rows    []rowText
	stream  *sse
	usage   bool
	final   [][]int32
}

type rowText struct {
	pre     string // the prompt's text
	text    string // the text so far, cut at a stop sequence
	sent    string // what the stream has sent of text
	stopped bool   // a stop sequence was found
}

func (a *answer) object() string {
	if a.chat {
		return "chat.completion"
	}
	return "text_completion"
}

func (a *answer) fullID() string {
	if a.chat {
		return "chatcmpl-" + a.id
	}
	return "cmpl-" + a.id
}

func (a *answer) chunk(choices []choice) completion {
	obj := a.object()
	if a.chat {
		obj += ".chunk"
	}
	return completion{ID: a.fullID(), Object: obj, Created: a.created, Model: a.s.cfg.Name, Choices: choices}
}

func (a *answer) piece(i int, text string, finish *string) choice {
	c := choice{Index: i, FinishReason: finish}
	if a.chat {
		c.Delta = &chatMessage{Content: text}
	} else {
		c.Text = &text
	}
	return c
}

// start sends the stream's opening chunk: the assistant role (chat), or
// the prompt's text (echo).
func (a *answer) start() {
	if !a.chat && !a.echo {
		return
	}
	var cs []choice
	for i := range a.rows {
		c := a.piece(i, "", nil)
		if a.chat {
			c.Delta.Role = "assistant"
		} else {
			*c.Text = a.rows[i].pre
		}
		cs = append(cs, c)
	}
	a.stream.send(a.chunk(cs))
}

// wait follows the job: each finished block updates the rows' text (and
// the stream). When every row has met a stop sequence the job is cancelled
// and its rows so far are the result (stoppedEarly).
func (a *answer) wait(j *job, cancel context.CancelFunc) (res result, stoppedEarly bool) {
	for {
		select {
		case rows := <-j.blocks:
			if a.update(rows, j.opt.StopAtEOS, false) {
				cancel()
				return result{tokens: a.cut(rows, j.opt.StopAtEOS)}, true
			}
		case <-j.stepsNotify:
			j.mu.Lock()
			rows := j.steps
			j.mu.Unlock()
			a.sendPartial(rows)
		case res := <-j.done:
			// Blocks sent before done still go out one by one.
			for len(j.blocks) > 0 {
				rows := <-j.blocks
				if a.update(rows, j.opt.StopAtEOS, false) {
					return result{tokens: a.cut(rows, j.opt.StopAtEOS)}, true
				}
			}
			select {
			case <-j.stepsNotify: // the last step's view, set before done
				j.mu.Lock()
				rows := j.steps
				j.mu.Unlock()
				a.sendPartial(rows)
			default:
			}
			return res, false
		case <-j.ctx.Done():
			select {
			case res := <-j.done:
				if res.err == nil {
					return res, false
				}
			default:
			}
			return result{err: j.ctx.Err()}, false
		}
	}
}

// cut ends each row at its first EOS, as the sampler's result does.
func (a *answer) cut(rows [][]int32, stopAtEOS bool) [][]int32 {
	out := make([][]int32, len(rows))
	for r, row := range rows {
		if stopAtEOS {
			for i, t := range row {
				if a.isEOS(t) {
					row = row[:i]
					break
				}
			}
		}
		for len(row) > 0 && a.isEOS(row[len(row)-1]) {
			row = row[:len(row)-1]
		}
		out[r] = row
	}
	return out
}

func (a *answer) isEOS(t int32) bool {
	for _, e := range a.s.eos {
		if e == t {
			return true
		}
	}
	return false
}

// update recomputes the rows' text from their tokens and streams what is
// final of it; it reports whether every row has met a stop sequence.
func (a *answer) update(rows [][]int32, stopAtEOS, final bool) bool {
	rows = a.cut(rows, stopAtEOS)
	var cs []choice
	all := true
	for i := range a.rows {
		rt := &a.rows[i]
		if i >= len(rows) {
			all = false
			continue
		}
		if !rt.stopped {
			if a.chat {
				rt.text = a.s.chatText(rows[i], final)
			} else {
				rt.text = a.s.genText(a.prompt, rows[i], rt.pre)
			}
			if k := firstStop(rt.text, a.stops); k >= 0 {
				rt.text, rt.stopped = rt.text[:k], true
			}
		}
		all = all && rt.stopped
		if a.stream == nil {
			continue
		}
		safe := rt.text
		if !final && !rt.stopped {
			// Byte tokens at the end may join the next block's into one
			// character (or, invalid, each become U+FFFD): hold them back.
			k := len(rows[i])
			for k > 0 && a.s.byteTok[rows[i][k-1]] {
				k--
			}
			if a.chat {
				safe = strings.TrimRightFunc(holdBack(a.s.chatText(rows[i][:k], false), a.stops), unicode.IsSpace)
			} else {
				safe = holdBack(a.s.genText(a.prompt, rows[i][:k], rt.pre), a.stops)
			}
		}
		delta := ""
		if len(safe) > len(rt.sent) && strings.HasPrefix(safe, rt.sent) {
			delta = safe[len(rt.sent):]
			rt.sent = safe
		}
		if delta != "" || !final {
			cs = append(cs, a.piece(i, delta, nil))
		}
	}
	// One chunk per finished block, even when what it adds is held back,
	// so a client sees the progress.
	if len(cs) > 0 {
		a.stream.send(a.chunk(cs))
	}
	return all && len(a.stops) > 0
}

// firstStop is where the earliest stop sequence starts in text (-1: none).
func firstStop(text string, stops []string) int {
	k := -1
	for _, st := range stops {
		if i := strings.Index(text, st); i >= 0 && (k < 0 || i < k) {
			k = i
		}
	}
	return k
}

// holdBack drops what later tokens may still change: a trailing
// replacement character (half a UTF-8 sequence from byte tokens) and a tail
// that could begin a stop sequence.
func holdBack(text string, stops []string) string {
	for strings.HasSuffix(text, "\uFFFD") {
		text = strings.TrimSuffix(text, "\uFFFD")
	}
	cut := 0
	for _, st := range stops {
		for k := len(st) - 1; k > cut; k-- {
			if strings.HasSuffix(text, st[:k]) {
				cut = k
				break
			}
		}
	}
	text = text[:len(text)-cut]
	for len(text) > 0 && !utf8.ValidString(text) {
		text = text[:len(text)-1]
	}
	return text
}

func (a *answer) reason(i int) *string {
	r := "length"
	if a.rows[i].stopped || len(a.final[i]) < a.genLen {
		r = "stop"
	}
	return &r
}

// finish takes the final tokens; a stream gets the rest of the text, each
// row's finish reason, the usage when asked, and [DONE] from the caller.
func (a *answer) finish(tokens [][]int32) {
	a.final = tokens
	a.update(tokens, false, true)
	if a.stream == nil {
		return
	}
	var cs []choice
	for i := range a.rows {
		cs = append(cs, a.piece(i, "", a.reason(i)))
	}
	a.stream.send(a.chunk(cs))
	if a.usage {
		c := a.chunk([]choice{})
		c.Usage = a.usageOf()
		a.stream.send(c)
	}
}

func (a *answer) usageOf() *usage {
	u := &usage{PromptTokens: len(a.prompt)}
	for _, t := range a.final {
		u.CompletionTokens += len(t)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// response is the whole answer of a request without stream.
func (a *answer) response(res result) completion {
	c := completion{ID: a.fullID(), Object: a.object(), Created: a.created, Model: a.s.cfg.Name, Usage: a.usageOf(),
		DLLM: &dllmInfo{Steps: res.steps, Forward: res.forward, BatchRows: res.batchRows}}
	if a.ids {
		c.PromptTokenIDs = a.prompt
	}
	for i := range a.rows {
		ch := choice{Index: i, FinishReason: a.reason(i)}
		text := a.rows[i].text
		if a.chat {
			ch.Message = &chatMessage{Role: "assistant", Content: text}
		} else {
			if a.echo {
				text = a.rows[i].pre + text
			}
			ch.Text = &text
		}
		if a.ids {
			ch.TokenIDs = a.final[i]
			if ch.TokenIDs == nil {
				ch.TokenIDs = []int32{}
			}
		}
		c.Choices = append(c.Choices, ch)
	}
	return c
}

// sse writes server-sent events; after a failed write (the client left)
// it writes nothing more.
type sse struct {
	w   io.Writer
	rc  *http.ResponseController
	err error
}

func (s *sse) send(v any) {
	if s.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		s.err = err
		return
	}
	if _, s.err = fmt.Fprintf(s.w, "data: %s\n\n", b); s.err == nil {
		s.err = s.rc.Flush()
	}
}

func (s *sse) done() {
	if s.err == nil {
		if _, s.err = io.WriteString(s.w, "data: [DONE]\n\n"); s.err == nil {
			s.err = s.rc.Flush()
		}
	}
}

// maskGlyph stands for a position still masked in a dllm_partial view.
const maskGlyph = "\u2591"

// sendPartial streams every row's whole sequence after a step, masked
// positions as maskGlyph, in a chunk's dllm_partial field; its text is
// empty, so the text chunks still join into the answer.
func (a *answer) sendPartial(rows [][]int32) {
	var cs []choice
	for i, row := range rows {
		var b strings.Builder
		run := []int32{}
		flush := func() {
			if len(run) > 0 {
				b.WriteString(a.s.decode(run))
				run = run[:0]
			}
		}
		for _, t := range row {
			if t == a.s.info.MaskID {
				flush()
				b.WriteString(maskGlyph)
			} else {
				run = append(run, t)
			}
		}
		flush()
		c := a.piece(i, "", nil)
		p := b.String()
		c.Partial = &p
		cs = append(cs, c)
	}
	a.stream.send(a.chunk(cs))
}
