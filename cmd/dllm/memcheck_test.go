package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

// TestMemoryPlanDecoding: generate --chat, chat, eval --task (generation)
// and serve refuse, before loading the weights (of a copy whose weights are
// NaN: loading them is refused), decoding whose memory plan (the one 'dllm
// plan --inference' prints) exceeds what is available by one byte, and run
// when exactly that much is available; chat checks each turn, serve each
// request, against the memory measured at the start.
func TestMemoryPlanDecoding(t *testing.T) {
	out, _ := convertTiny(t)
	final := filepath.Join(out, "final")
	nan := nanCopy(t, final, nil)
	if _, _, err := dllm(t, "generate", nan, "--ids", "1,5", "--gen-len", "4", "--threads", "1"); err == nil || !strings.Contains(err.Error(), "NaN") {
		t.Fatalf("the NaN copy: %v", err)
	}
	tmpl := filepath.Join(moduleRoot(t), "testdata/chat/chatml.jinja")
	defer func() { availableFor = model.Available }()
	budget := func(n int64) {
		availableFor = func(kernels.Backend) (float64, string) { return float64(n), "MemAvailable" }
	}
	planned := func(batch, seqLen int) int64 {
		p := planJSON(t, final, "--inference", "--threads", "1", "--batch-size", fmt.Sprint(batch), "--seq-len", fmt.Sprint(seqLen))
		if p.TotalBytes <= 0 || p.KVCacheBytes != 0 {
			t.Fatalf("plan %d x %d: %+v", batch, seqLen, p)
		}
		return p.TotalBytes
	}
	refused := func(err error, total int64, fix string) bool {
		return err != nil && strings.HasPrefix(err.Error(), "not enough memory: ") &&
			strings.Contains(err.Error(), "need "+model.FormatBytes(float64(total))+" (") && strings.HasSuffix(err.Error(), ": "+fix) &&
			!strings.Contains(err.Error(), "\n")
	}
	ck, err := model.Open(final, model.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := tokenizer.LoadChatTemplate(final, tmpl)
	if err != nil || ct == nil {
		t.Fatal(ct, err)
	}
	user := tokenizer.Message{Role: "user", Content: "Once upon a time"}
	text, err := ct.Render([]tokenizer.Message{user}, true)
	if err != nil {
		t.Fatal(err)
	}
	turn := len(ck.Tok.Encode(text, false)) + 8 // the rendered prompt and --gen-len
	gen := []string{"--gen-len", "8", "--steps", "2", "--threads", "1", "--chat-template", tmpl}

	// generate --chat: one row of the rendered prompt and --gen-len.
	total := planned(1, turn)
	args := append([]string{"generate", nan, "--chat", "--prompt", user.Content}, gen...)
	budget(total - 1)
	if _, _, err := dllm(t, args...); !refused(err, total, "lower --gen-len or shorten the prompt") {
		t.Errorf("generate --chat with %d bytes: %v", total-1, err)
	}
	args[1] = final
	budget(total)
	if _, stderr, err := dllm(t, args...); err != nil {
		t.Errorf("generate --chat with the plan's %d bytes: %v\n%s", total, err, stderr)
	}

	// chat: at the start, one row of --gen-len (no turn yet); then each
	// turn's conversation.
	chat := func(dir, in string) error {
		root := newRoot()
		root.SetIn(strings.NewReader(in))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"chat", dir}, gen...))
		return root.Execute()
	}
	fix := "lower --gen-len or shorten the conversation (/reset starts over)"
	start := planned(1, 8)
	budget(start - 1)
	if err := chat(nan, ""); !refused(err, start, fix) {
		t.Errorf("chat with %d bytes: %v", start-1, err)
	}
	budget(start)
	if err := chat(final, ""); err != nil {
		t.Errorf("chat with the plan's %d bytes, no message: %v", start, err)
	}
	if err := chat(final, user.Content+"\n"); !refused(err, total, fix) {
		t.Errorf("chat with %d bytes, a turn of %d tokens: %v", start, turn, err)
	}
	budget(total)
	if err := chat(final, user.Content+"\n"); err != nil {
		t.Errorf("chat with the turn's %d bytes: %v", total, err)
	}

	// eval --task, generation: one row of the longest prompt and --gen-len.
	tk := writeFile(t, "gen.jsonl", "{\"prompt\": \"Once upon a time\", \"answer\": \"#### 3\"}\n{\"prompt\": \"The cat\", \"answer\": \"#### 4\"}\n")
	total = planned(1, len(ck.Tok.Encode("Once upon a time", true))+8)
	args = []string{"eval", nan, "--task", tk, "--gen-len", "8", "--steps", "2", "--threads", "1"}
	budget(total - 1)
	if _, _, err := dllm(t, args...); err == nil || !refused(errors.Unwrap(err), total, "lower --gen-len") {
		t.Errorf("eval --task (generation) with %d bytes: %v", total-1, err)
	}
	args[1] = final
	budget(total)
	if _, stderr, err := dllm(t, args...); err != nil {
		t.Errorf("eval --task (generation) with the plan's %d bytes: %v\n%s", total, err, stderr)
	}
	// AR decoding plans its KV cache.
	budget(1 << 10)
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	if _, _, err := dllm(t, "eval", src, "--task", tk, "--gen-len", "8", "--threads", "1"); err == nil ||
		!strings.Contains(err.Error(), ": not enough memory: the weights, activations and KV cache of 1 x ") {
		t.Errorf("eval --task (generation) --mode ar with 1 KiB: %v", err)
	}

	// serve: at the start, --max-batch rows of --max-model-len, else of the
	// model's 256 positions or, when those do not fit, of the longest length
	// that does; each request, its rows (n, or --max-batch when batched) of
	// its prompt and max_tokens.
	f := serveFlags{device: "cpu", threads: 1, maxBatch: 2, maxQueue: 4, maxBody: 1 << 20, maxLen: 256}
	var note strings.Builder
	quiet := &cobra.Command{}
	quiet.SetErr(&note)
	total = planned(2, 256)
	budget(total - 1)
	if _, _, err := openServer(quiet, nan, &f); !refused(err, total, "lower --max-batch or --max-model-len") {
		t.Errorf("serve --max-model-len 256 with %d bytes: %v", total-1, err)
	}
	f.maxLen = 0
	budget(planned(2, 1) - 1)
	if _, _, err := openServer(quiet, nan, &f); !refused(err, total, "lower --max-batch or --max-model-len") {
		t.Errorf("serve with %d bytes, less than one token's: %v", planned(2, 1)-1, err)
	}
	budget(total)
	srv, be, err := openServer(quiet, final, &f)
	if err != nil || note.Len() != 0 {
		t.Fatalf("serve with the plan's %d bytes: %v %q", total, err, note.String())
	}
	srv.Close()
	be.Close()
	// A byte less: the longest that fits, named on stderr; one token more
	// gets a 400.
	longest := 255
	for planned(2, longest) > total-1 {
		longest--
	}
	budget(total - 1)
	if srv, be, err = openServer(quiet, final, &f); err != nil {
		t.Fatalf("serve with %d bytes: %v", total-1, err)
	}
	if want := fmt.Sprintf("requests of up to %d tokens (prompt and max_tokens) are served", longest); !strings.Contains(note.String(), want) ||
		strings.Count(note.String(), "\n") != 1 {
		t.Errorf("serve with %d bytes said %q, want one line with %q", total-1, note.String(), want)
	}
	post := func(url string, n, tokens int) (int, string) {
		prompt, _ := json.Marshal(ck.Tok.Encode("Once", true))
		body := fmt.Sprintf(`{"prompt": %s, "max_tokens": %d, "n": %d, "steps": 2}`, prompt, tokens-len(ck.Tok.Encode("Once", true)), n)
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, fmt.Sprint(got["error"])
	}
	ts := httptest.NewServer(srv.Handler())
	if code, e := post(ts.URL, 1, longest+1); code != 400 || !strings.Contains(e, fmt.Sprintf("not enough memory: the weights and activations of 2 x %d tokens", longest+1)) {
		t.Errorf("a request of %d tokens: %d %s", longest+1, code, e)
	}
	if code, e := post(ts.URL, 1, longest); code != 200 {
		t.Errorf("a request of %d tokens: %d %s", longest, code, e)
	}
	ts.Close()
	srv.Close()
	be.Close()
	// A request without max_tokens gets the model's default (32) cut to
	// what its prompt leaves of the longest that fits, not a 400.
	def, short := diffusion.GenDefaults(final).GenLen, 20
	budget(planned(2, short))
	for planned(2, short+1) <= planned(2, 20) {
		short++
	}
	if srv, be, err = openServer(quiet, final, &f); err != nil {
		t.Fatalf("serve with %d tokens' bytes: %v", short, err)
	}
	ts = httptest.NewServer(srv.Handler())
	once, _ := json.Marshal(ck.Tok.Encode("Once", true))
	resp, err := http.Post(ts.URL+"/v1/completions", "application/json",
		strings.NewReader(fmt.Sprintf(`{"prompt": %s, "steps": 2, "stop_at_eos": false}`, once)))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if want := short - len(ck.Tok.Encode("Once", true)); err != nil || resp.StatusCode != 200 || got.Usage.CompletionTokens != want || want >= def {
		t.Errorf("a request without max_tokens, %d tokens fit: %d %+v %v; want %d completion tokens (of the default %d)", short, resp.StatusCode, got, err, want, def)
	}
	ts.Close()
	srv.Close()
	be.Close()
	f.maxLen = 64
	budget(planned(2, 64))
	if srv, be, err = openServer(quiet, final, &f); err != nil {
		t.Fatalf("serve --max-model-len 64 with its plan's bytes: %v", err)
	}
	defer be.Close()
	defer srv.Close()
	ts = httptest.NewServer(srv.Handler())
	defer ts.Close()
	prompt := ck.Tok.Encode("Once", true)
	ids, _ := json.Marshal(prompt)
	for _, c := range []struct {
		n, maxTokens, status int
		want                 string
	}{
		{2, 64 - len(prompt), 200, ""},
		{8, 64 - len(prompt), 400, "not enough memory: the weights and activations of 8 x 64 tokens need"},
		{1, 65 - len(prompt), 400, "over this server's limit of 64 tokens"},
	} {
		body := fmt.Sprintf(`{"prompt": %s, "max_tokens": %d, "n": %d, "steps": 2}`, ids, c.maxTokens, c.n)
		resp, err := http.Post(ts.URL+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != c.status || !strings.Contains(fmt.Sprint(got["error"]), c.want) {
			t.Errorf("%s: %d %v %v; want %d %q", body, resp.StatusCode, got, err, c.status, c.want)
		}
	}
}
