package serve

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStreamHoldsBack: byte tokens that end a block are not streamed until
// the character they begin is complete, a tail that may begin a stop
// sequence waits, and the chunks join into the final text.
func TestStreamHoldsBack(t *testing.T) {
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{})
	s := ts.Server
	id := func(tok string) int32 {
		v, ok := s.tok.ID(tok)
		if !ok {
			t.Fatalf("no token %q", tok)
		}
		return int32(v)
	}
	prompt := encode(s, "Hi")
	// "a", then é as two byte tokens split across blocks, then "b", "X", "Y".
	gen := []int32{id("a"), id("<0xC3>"), id("<0xA9>"), id("b"), id("X"), id("Y")}
	rec := httptest.NewRecorder()
	a := &answer{s: s, n: 1, prompt: prompt, genLen: len(gen), stops: []string{"XYZ"}, rows: make([]rowText, 1),
		stream: &sse{w: rec, rc: http.NewResponseController(rec)}}
	a.rows[0].pre = s.decode(prompt)
	var sent []string
	for _, hi := range []int{2, 4, 5, 6} {
		before := a.rows[0].sent
		a.update([][]int32{gen[:hi]}, false, false)
		sent = append(sent, strings.TrimPrefix(a.rows[0].sent, before))
	}
	a.finish([][]int32{gen})
	// After "a" + <0xC3>: only "a"; after é b: "éb"; "X" could begin XYZ,
	// and so could "XY": held back until the end.
	want := []string{"a", "éb", "", ""}
	for i := range want {
		if sent[i] != want[i] {
			t.Fatalf("block %d sent %q, want %q (all: %q)", i, sent[i], want[i], sent)
		}
	}
	chunks := readStream(t, strings.NewReader(rec.Body.String()+"data: [DONE]\n\n"))
	text, finish, _ := concat(chunks)
	if final := a.rows[0].text; text[0] != final || final != "aébXY" || finish[0] != "length" {
		t.Fatalf("stream %q finish %q, final %q", text[0], finish[0], final)
	}
}
