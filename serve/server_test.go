package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

const chatTemplate = `{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}`

// tinyDiffusion makes a diffusion checkpoint of the tiny random llama:
// its files plus a "dllm" block (mask 380, a spare row; shift), block
// causal when block > 0, with a chat template when chat.
func tinyDiffusion(t *testing.T, block int, chat bool) string {
	t.Helper()
	src := "../testdata/tiny/llama"
	dir := t.TempDir()
	for _, f := range []string{"model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "tokenizer_config.json" && chat {
			var c map[string]any
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatal(err)
			}
			c["chat_template"] = chatTemplate
			b, _ = json.Marshal(c)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var cfg map[string]any
	b, _ := os.ReadFile(filepath.Join(src, "config.json"))
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	d := map[string]any{"mask_token_id": 380, "shift": true, "attention": "bidirectional", "objective": "elbo",
		"weighting": "elbo", "source_model": "tiny", "steps": 0, "tokens_seen": 0}
	if block > 0 {
		d["attention"], d["block_size"] = "block", block
	}
	cfg["dllm"] = d
	b, _ = json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Defaults a request without sampler fields gets.
	gc := `{"gen_length": 12, "steps": 6, "block_length": 4, "temperature": 0.6}`
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(gc), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type testServer struct {
	*Server
	dir string
	url string
	ts  *httptest.Server
	log *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestServer(t *testing.T, dir string, cfg Config, hooks ...func(*queue)) *testServer {
	t.Helper()
	ck, err := model.Open(dir, model.OpenOptions{Backend: cpu.New(2)})
	if err != nil {
		t.Fatal(err)
	}
	lb := &syncBuffer{}
	cfg.Log = lb
	s, err := New(ck, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		h(s.q)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		s.Close()
	})
	return &testServer{Server: s, dir: dir, url: ts.URL, ts: ts, log: lb}
}

func post(t *testing.T, url, body string) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: response is not JSON: %q", url, raw)
	}
	return resp.StatusCode, out, resp.Header
}

func completionText(t *testing.T, out map[string]any, i int) string {
	t.Helper()
	c := out["choices"].([]any)[i].(map[string]any)
	if m, ok := c["message"].(map[string]any); ok {
		return m["content"].(string)
	}
	return c["text"].(string)
}

func tokenIDs(out map[string]any, i int) []int32 {
	var ids []int32
	for _, v := range out["choices"].([]any)[i].(map[string]any)["token_ids"].([]any) {
		ids = append(ids, int32(v.(float64)))
	}
	return ids
}

// alone decodes with the library sampler directly, as `dllm generate`
// does: the reference a request must equal.
func alone(t *testing.T, s *Server, prompt []int32, opt diffusion.GenOptions) [][]int32 {
	t.Helper()
	smp, err := diffusion.NewSampler(s.m, s.info, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer smp.Free()
	res, err := smp.Generate(prompt)
	if err != nil {
		t.Fatal(err)
	}
	return res.Tokens
}

func encode(s *Server, text string) []int32 {
	var ids []int32
	for _, id := range s.tok.Encode(text, true) {
		ids = append(ids, int32(id))
	}
	return ids
}

// TestCompletionEqualsSampler: a completion gives the tokens of the
// sampler run alone with the same settings (generation_config.json's
// defaults where the request gives none), and their text decoded after the
// prompt's.
func TestCompletionEqualsSampler(t *testing.T) {
	for _, block := range []int{0, 4} {
		ts := newTestServer(t, tinyDiffusion(t, block, false), Config{})
		p := encode(ts.Server, "Once upon a time")
		for _, c := range []struct {
			body string
			opt  diffusion.GenOptions
		}{
			{`{"prompt": "Once upon a time", "return_token_ids": true}`,
				diffusion.GenOptions{GenLen: 12, Steps: 6, BlockLen: 4, Temperature: 0.6, Alg: "confidence"}},
			{`{"prompt": "Once upon a time", "max_tokens": 10, "steps": 10, "seed": 11, "temperature": 0.9, "top_p": 0.8,
			  "alg": "margin", "n": 2, "return_token_ids": true}`,
				diffusion.GenOptions{GenLen: 10, Steps: 10, BlockLen: 4, Temperature: 0.9, TopP: 0.8, Alg: "margin", Seed: 11, Batch: 2}},
			{`{"prompt": "Once upon a time", "max_tokens": 16, "block_length": 8, "threshold": 0.1, "top_k": 20,
			  "temperature": 0, "return_token_ids": true}`,
				diffusion.GenOptions{GenLen: 16, Steps: 6, BlockLen: 8, TopK: 20, Threshold: 0.1, Alg: "confidence"}},
		} {
			code, out, _ := post(t, ts.url+"/v1/completions", c.body)
			if code != 200 {
				t.Fatalf("%s: %d %v", c.body, code, out)
			}
			c.opt.EOS, c.opt.StopAtEOS = ts.eos, true
			want := alone(t, ts.Server, p, c.opt)
			for i := range want {
				if got := tokenIDs(out, i); !slices.Equal(got, want[i]) {
					t.Fatalf("block %d %s: choice %d tokens %v, sampler %v", block, c.body, i, got, want[i])
				}
				if got, text := completionText(t, out, i), ts.genText(p, want[i], ts.decode(p)); got != text {
					t.Fatalf("text %q, want %q", got, text)
				}
			}
			u := out["usage"].(map[string]any)
			if int(u["prompt_tokens"].(float64)) != len(p) {
				t.Fatalf("usage %v: prompt of %d tokens", u, len(p))
			}
		}
	}
}

// TestDefaultMaxTokens: a request without max_tokens gets the model's
// gen_length (12 here) cut to --max-tokens and to what its prompt leaves of
// the server's limits (the positions, MaxLen, FitLen), each of its n rows,
// streamed or not, for completions and chat (whose prompt is the
// template's); one whose prompt leaves nothing gets a 400 that names the
// prompt. An explicit max_tokens (chat: max_completion_tokens first) is
// taken as asked; over MaxTokens it is still refused (TestBadRequests).
func TestDefaultMaxTokens(t *testing.T) {
	dir := tinyDiffusion(t, 0, true)
	p := len(encode(newTestServer(t, dir, Config{}).Server, "Once upon a time"))
	const msgs = `"messages": [{"role": "user", "content": "Once upon a time"}]`
	_, out, _ := post(t, newTestServer(t, dir, Config{}).url+"/v1/chat/completions", `{`+msgs+`, "max_tokens": 1, "steps": 1}`)
	pc := int(out["usage"].(map[string]any)["prompt_tokens"].(float64)) // the template's tokens
	if pc <= p {
		t.Fatalf("the chat prompt has %d tokens, the bare one %d", pc, p)
	}
	const comp, chat = "/v1/completions", "/v1/chat/completions"
	for _, c := range []struct {
		path string
		cfg  Config
		body string
		want int // completion tokens (all rows); 0: a 400
	}{
		{comp, Config{}, `{"prompt": "Once upon a time"}`, 12},
		{comp, Config{MaxTokens: 8}, `{"prompt": "Once upon a time"}`, 8},
		{comp, Config{MaxLen: p + 5}, `{"prompt": "Once upon a time"}`, 5},
		{comp, Config{MaxLen: p + 5}, `{"prompt": "Once upon a time", "n": 2}`, 2 * 5},
		{comp, Config{MaxLen: p + 5}, `{"prompt": "Once upon a time", "stream": true, "stream_options": {"include_usage": true}}`, 5},
		{comp, Config{FitLen: p + 3, MaxTokens: 8}, `{"prompt": "Once upon a time"}`, 3},
		{comp, Config{MaxLen: p + 5}, `{"prompt": "Once upon a time", "max_tokens": 6}`, 0},
		{comp, Config{MaxLen: p + 5}, `{"prompt": "Once upon a time", "max_completion_tokens": 3}`, 5}, // not a completions field
		{comp, Config{MaxLen: p}, `{"prompt": "Once upon a time"}`, 0},
		{comp, Config{}, `{"prompt": [` + strings.Repeat("5, ", 255) + `5]}`, 0},
		{chat, Config{}, `{` + msgs + `}`, 12},
		{chat, Config{MaxLen: pc + 5}, `{` + msgs + `}`, 5},
		{chat, Config{MaxLen: pc + 5}, `{` + msgs + `, "n": 3}`, 3 * 5},
		{chat, Config{MaxLen: pc + 5}, `{` + msgs + `, "max_tokens": 3}`, 3},
		{chat, Config{MaxLen: pc + 5}, `{` + msgs + `, "max_completion_tokens": 2, "max_tokens": 4}`, 2},
		{chat, Config{MaxLen: pc}, `{` + msgs + `}`, 0},
	} {
		ts := newTestServer(t, dir, c.cfg)
		body := strings.TrimSuffix(c.body, "}") + `, "stop_at_eos": false, "steps": 2}`
		if strings.Contains(body, `"stream": true`) {
			chunks := stream(t, ts.url+c.path, body)
			u, _ := chunks[len(chunks)-1]["usage"].(map[string]any)
			if u == nil || int(u["completion_tokens"].(float64)) != c.want {
				t.Errorf("%s %+v %s: last chunk %v, want usage of %d completion tokens", c.path, c.cfg, c.body, chunks[len(chunks)-1], c.want)
			}
			continue
		}
		code, out, _ := post(t, ts.url+c.path, body)
		if c.want == 0 {
			e, _ := out["error"].(map[string]any)
			if code != 400 || e == nil || (!strings.Contains(body, "max_tokens") && (e["param"] != "prompt" || !strings.Contains(fmt.Sprint(e["message"]), "leaves no room to generate"))) {
				t.Errorf("%s %+v %s: %d %v, want a 400", c.path, c.cfg, c.body, code, out)
			}
			continue
		}
		if code != 200 {
			t.Errorf("%s %+v %s: %d %v", c.path, c.cfg, c.body, code, out)
			continue
		}
		if u := out["usage"].(map[string]any); int(u["completion_tokens"].(float64)) != c.want {
			t.Errorf("%s %+v %s: usage %v, want %d completion tokens", c.path, c.cfg, c.body, u, c.want)
		}
	}
}

// holdWorker blocks the worker before each batch until release is
// closed, so requests pile up in the queue; batches records each batch's
// rows and outcome.
type holdWorker struct {
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	rows    []int
	errs    []error
}

func newHold() *holdWorker { return &holdWorker{release: make(chan struct{})} }

func (h *holdWorker) hook(q *queue) {
	q.beforeBatch = func(b []*job) {
		<-h.release
		h.mu.Lock()
		n := 0
		for _, j := range b {
			n += j.group.Rows
		}
		h.rows = append(h.rows, n)
		h.mu.Unlock()
	}
	q.afterBatch = func(_ *diffusion.GenResult, err error) {
		h.mu.Lock()
		h.errs = append(h.errs, err)
		h.mu.Unlock()
	}
}

func (h *holdWorker) open() { h.once.Do(func() { close(h.release) }) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestConcurrentEqualSequential: requests sent at once (different seeds,
// temperatures > 0, one with n=2) are batched into one forward and each
// gets the tokens it gets alone; a request with other settings runs in its
// own batch.
func TestConcurrentEqualSequential(t *testing.T) {
	for _, block := range []int{0, 4} {
		dir := tinyDiffusion(t, block, false)
		body := func(seed, n int, prompt string) string {
			return fmt.Sprintf(`{"prompt": %q, "max_tokens": 12, "temperature": 0.8, "seed": %d, "n": %d, "return_token_ids": true}`, prompt, seed, n)
		}
		// Same prompt length (the ids of "Once upon a time", one of them
		// changed), and one of another length.
		s0 := newTestServer(t, dir, Config{})
		ids := encode(s0.Server, "Once upon a time")
		ids[len(ids)-2] = 70
		alt, _ := json.Marshal(ids)
		reqs := []string{body(1, 1, "Once upon a time"), strings.Replace(body(2, 2, "x"), `"x"`, string(alt), 1), body(3, 1, "Once upon a time"),
			body(4, 1, "Hello"), `{"prompt": "Once upon a time", "max_tokens": 12, "steps": 3, "seed": 1, "return_token_ids": true}`}
		seq := newTestServer(t, dir, Config{MaxBatch: 1})
		var want []map[string]any
		for _, r := range reqs {
			code, out, _ := post(t, seq.url+"/v1/completions", r)
			if code != 200 {
				t.Fatalf("%d %v", code, out)
			}
			want = append(want, out)
		}
		h := newHold()
		ts := newTestServer(t, dir, Config{MaxBatch: 8}, h.hook)
		got := make([]map[string]any, len(reqs))
		var wg sync.WaitGroup
		// The first request holds the worker; the others queue behind it.
		for i, r := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, out, _ := post(t, ts.url+"/v1/completions", r)
				if code != 200 {
					t.Errorf("%d %v", code, out)
				}
				got[i] = out
			}()
			if i == 0 {
				waitFor(t, "the first batch", func() bool { _, run := ts.q.stats(); return run == 1 })
			}
		}
		waitFor(t, "the queue", func() bool { w, _ := ts.q.stats(); return w == len(reqs)-1 })
		h.open()
		wg.Wait()
		if t.Failed() {
			return
		}
		for i := range reqs {
			for c := range want[i]["choices"].([]any) {
				if !slices.Equal(tokenIDs(got[i], c), tokenIDs(want[i], c)) || completionText(t, got[i], c) != completionText(t, want[i], c) {
					t.Fatalf("block %d request %d choice %d: concurrent %v, sequential %v", block, i, c, tokenIDs(got[i], c), tokenIDs(want[i], c))
				}
			}
		}
		// Batches: the first alone, then requests 1+2 (3 rows) together;
		// 3 and 4 differ in prompt length or settings.
		if !slices.Contains(h.rows, 3) {
			t.Fatalf("block %d: batches of %v rows: the compatible requests were not batched", block, h.rows)
		}
		rows := int(got[1]["dllm"].(map[string]any)["batch_rows"].(float64))
		if rows != 3 {
			t.Fatalf("request 1 ran in a batch of %d rows, want 3", rows)
		}
	}
}

type event struct {
	data string
}

// readStream reads server-sent events up to [DONE].
func readStream(t *testing.T, body io.Reader) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(body)
	done := false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if !strings.HasPrefix(line, "data: ") {
			t.Fatalf("not an SSE data line: %q", line)
		}
		if done {
			t.Fatalf("data after [DONE]: %q", line)
		}
		d := strings.TrimPrefix(line, "data: ")
		if d == "[DONE]" {
			done = true
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("chunk is not JSON: %q", d)
		}
		out = append(out, m)
	}
	if !done {
		t.Fatalf("the stream did not end with data: [DONE]")
	}
	return out
}

func stream(t *testing.T, url, body string) []map[string]any {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return readStream(t, resp.Body)
}

// concat joins the text of a stream's chunks per choice and returns the
// finish reasons and the number of chunks before the last.
func concat(chunks []map[string]any) (text map[int]string, finish map[int]string, pieces int) {
	text, finish = map[int]string{}, map[int]string{}
	for _, c := range chunks {
		if len(c["choices"].([]any)) > 0 && c["choices"].([]any)[0].(map[string]any)["finish_reason"] == nil {
			pieces++
		}
		for _, ch := range c["choices"].([]any) {
			ch := ch.(map[string]any)
			i := int(ch["index"].(float64))
			s, _ := ch["text"].(string)
			if d, ok := ch["delta"].(map[string]any); ok {
				s, _ = d["content"].(string)
			}
			text[i] += s
			if f, ok := ch["finish_reason"].(string); ok {
				finish[i] = f
			}
		}
	}
	return text, finish, pieces
}

// TestStreamConcatenatesToAnswer: the chunks of a stream join into the
// text of the same request without stream; a block model (and a
// semi-autoregressive one) sends text block by block.
func TestStreamConcatenatesToAnswer(t *testing.T) {
	for _, block := range []int{0, 4} {
		ts := newTestServer(t, tinyDiffusion(t, block, true), Config{})
		for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
			in := `"prompt": "Once upon a time"`
			if path == "/v1/chat/completions" {
				in = `"messages": [{"role": "user", "content": "Tell me a story"}]`
			}
			for _, extra := range []string{`"seed": 5, "n": 2`, `"seed": 6, "stop": ["e"]`, `"seed": 7, "stream_options": {"include_usage": true}`} {
				plain := fmt.Sprintf(`{%s, "max_tokens": 24, "temperature": 1, "block_length": 4, %s}`, in, extra)
				code, out, _ := post(t, ts.url+path, plain)
				if code != 200 {
					t.Fatalf("%d %v", code, out)
				}
				chunks := stream(t, ts.url+path, strings.Replace(plain, "{", `{"stream": true, `, 1))
				text, finish, pieces := concat(chunks)
				for i, c := range out["choices"].([]any) {
					want := completionText(t, out, i)
					if text[i] != want {
						t.Fatalf("block %d %s %s: stream %q, answer %q", block, path, extra, text[i], want)
					}
					if finish[i] != c.(map[string]any)["finish_reason"] {
						t.Fatalf("finish %q, answer's %v", finish[i], c.(map[string]any)["finish_reason"])
					}
				}
				// A chunk per finished block of 4: 6, or 7 for the block
				// model whose blocks are aligned to the model's (fewer when
				// all rows end early at EOS), the chat's role chunk first,
				// and one with the held-back rest.
				if path == "/v1/chat/completions" {
					pieces--
				}
				if !strings.Contains(extra, "stop") && (pieces < 2 || pieces > 8) {
					t.Fatalf("block %d %s %s: %d text chunks: not streamed block by block: %v %v", block, path, extra, pieces, text, out)
				}
				if strings.Contains(extra, "include_usage") && chunks[len(chunks)-1]["usage"] == nil {
					t.Fatalf("no usage chunk at the end")
				}
				if strings.Contains(extra, `"e"`) && strings.Contains(text[0], "e") {
					t.Fatalf("text %q goes past the stop sequence", text[0])
				}
			}
		}
	}
}

// TestBadRequests: malformed or out-of-range requests get 4xx with an
// OpenAI-style error object.
func TestBadRequests(t *testing.T) {
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{MaxTokens: 64, MaxBody: 4096})
	big := `{"prompt": "` + strings.Repeat("a", 5000) + `"}`
	for _, c := range []struct {
		path, body string
		code       int
		param      string
	}{
		{"/v1/completions", `{"prompt": "hi"`, 400, ""},
		{"/v1/completions", `not json`, 400, ""},
		{"/v1/completions", `{"prompt": "hi"} {"prompt": "again"}`, 400, ""},
		{"/v1/completions", `{"prompt": "hi", "max_tokens": "ten"}`, 400, "max_tokens"},
		{"/v1/completions", `{"prompt": "hi", "temperature": "hot"}`, 400, "temperature"},
		{"/v1/completions", `{"prompt": "hi", "stream": "yes"}`, 400, "stream"},
		{"/v1/completions", `{"prompt": 5}`, 400, "prompt"},
		{"/v1/completions", `{"prompt": ["a", "b"]}`, 400, "prompt"},
		{"/v1/completions", `{"max_tokens": 4}`, 400, "prompt"},
		{"/v1/completions", `{"prompt": [1, -3]}`, 400, "prompt"},
		{"/v1/completions", `{"prompt": [1, 999]}`, 400, "prompt"},
		{"/v1/completions", `{"prompt": "hi", "max_tokens": -1}`, 400, "max_tokens"},
		{"/v1/completions", `{"prompt": "hi", "max_tokens": 0}`, 400, "max_tokens"},
		{"/v1/completions", `{"prompt": "hi", "max_tokens": 65}`, 400, "max_tokens"},
		{"/v1/completions", `{"prompt": "hi", "temperature": -0.5}`, 400, "temperature"},
		{"/v1/completions", `{"prompt": "hi", "top_p": 0}`, 400, "top_p"},
		{"/v1/completions", `{"prompt": "hi", "n": 0}`, 400, "n"},
		{"/v1/completions", `{"prompt": "hi", "n": 100}`, 400, "n"},
		{"/v1/completions", `{"prompt": "hi", "seed": -2}`, 400, "seed"},
		{"/v1/completions", `{"prompt": "hi", "steps": -4}`, 400, "steps"},
		{"/v1/completions", `{"prompt": "hi", "block_length": -1}`, 400, "block_length"},
		{"/v1/completions", `{"prompt": "hi", "threshold": 1.5}`, 400, "threshold"},
		{"/v1/completions", `{"prompt": "hi", "alg": "best"}`, 400, "alg"},
		{"/v1/completions", `{"prompt": "hi", "stop": 7}`, 400, "stop"},
		{"/v1/completions", `{"prompt": "hi", "logprobs": 2}`, 400, "logprobs"},
		{"/v1/completions", `{"prompt": "hi", "model": "gpt-4"}`, 404, ""},
		{"/v1/completions", big, 413, ""},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}]}`, 400, ""},
		{"/v1/nothing", `{}`, 404, ""},
	} {
		code, out, _ := post(t, ts.url+c.path, c.body)
		e, ok := out["error"].(map[string]any)
		if code != c.code || !ok || e["message"] == "" || e["type"] == "" {
			t.Fatalf("%s %.60s: %d %v, want %d with an error object", c.path, c.body, code, out, c.code)
		}
		if c.param != "" && e["param"] != c.param {
			t.Fatalf("%.60s: param %v, want %s", c.body, e["param"], c.param)
		}
	}
	resp, err := http.Get(ts.url + "/v1/completions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/completions: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// The chat endpoint of a model with a template rejects bad messages.
	chat := newTestServer(t, tinyDiffusion(t, 0, true), Config{})
	for _, body := range []string{`{"messages": []}`, `{"messages": "hi"}`, `{"messages": [{"content": "hi"}]}`,
		`{"messages": [{"role": "user", "content": 3}]}`, `{"prompt": "hi"}`} {
		if code, out, _ := post(t, chat.url+"/v1/chat/completions", body); code != 400 || out["error"] == nil {
			t.Fatalf("chat %s: %d %v", body, code, out)
		}
	}
}

// TestChatUsesTemplate: a chat request decodes after the rendered and
// encoded conversation, and stops at the template's end of turn.
func TestChatUsesTemplate(t *testing.T) {
	ts := newTestServer(t, tinyDiffusion(t, 0, true), Config{})
	code, out, _ := post(t, ts.url+"/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
		"return_token_ids": true, "temperature": 0.9, "seed": 2}`)
	if code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	ct, err := tokenizer.LoadChatTemplate(ts.dir, "")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := ct.Render([]tokenizer.Message{{Role: "user", Content: "Hi"}}, true)
	var want []int32
	for _, id := range ts.tok.Encode(text, false) {
		want = append(want, int32(id))
	}
	var got []int32
	for _, v := range out["prompt_token_ids"].([]any) {
		got = append(got, int32(v.(float64)))
	}
	if !slices.Equal(got, want) || text != "<s>user: Hi</s><s>assistant:" {
		t.Fatalf("prompt %v (%q), want %v", got, text, want)
	}
	if out["object"] != "chat.completion" || out["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)["role"] != "assistant" {
		t.Fatalf("not a chat completion: %v", out)
	}
	toks := alone(t, ts.Server, want, diffusion.GenOptions{GenLen: 12, Steps: 6, BlockLen: 4, Temperature: 0.9, Seed: 2,
		EOS: ts.eos, StopAtEOS: true})
	if ids := tokenIDs(out, 0); !slices.Equal(ids, toks[0]) {
		t.Fatalf("chat tokens %v, sampler %v", ids, toks[0])
	}
}

// TestQueueFull: past --max-queue requests waiting or running, a request
// gets 503 with Retry-After.
func TestQueueFull(t *testing.T) {
	h := newHold()
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{MaxQueue: 2}, h.hook)
	defer h.open()
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, out, _ := post(t, ts.url+"/v1/completions", `{"prompt": "hi", "max_tokens": 4}`); code != 200 {
				t.Errorf("%d %v", code, out)
			}
		}()
	}
	waitFor(t, "two admitted", func() bool { w, r := ts.q.stats(); return w+r == 2 })
	code, out, hdr := post(t, ts.url+"/v1/completions", `{"prompt": "hi", "max_tokens": 4}`)
	if code != 503 || hdr.Get("Retry-After") == "" || out["error"] == nil {
		t.Fatalf("full queue: %d %v Retry-After %q", code, out, hdr.Get("Retry-After"))
	}
	h.open()
	wg.Wait()
	if code, out, _ := post(t, ts.url+"/v1/completions", `{"prompt": "hi", "max_tokens": 4}`); code != 200 {
		t.Fatalf("after the queue drained: %d %v", code, out)
	}
}

// TestTimeout: a request over --timeout gets 504 and frees its slot.
func TestTimeout(t *testing.T) {
	h := newHold()
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{Timeout: 100 * time.Millisecond, MaxQueue: 1}, h.hook)
	code, out, _ := post(t, ts.url+"/v1/completions", `{"prompt": "hi", "max_tokens": 4}`)
	if code != 504 || out["error"] == nil {
		t.Fatalf("timeout: %d %v", code, out)
	}
	h.open()
	waitFor(t, "the slot", func() bool { ts.q.mu.Lock(); defer ts.q.mu.Unlock(); return ts.q.admitted == 0 })
	if code, out, _ := post(t, ts.url+"/v1/completions", `{"prompt": "hi", "max_tokens": 4}`); code != 200 {
		t.Fatalf("next request: %d %v", code, out)
	}
	if !strings.Contains(ts.log.String(), "(timeout)") {
		t.Fatalf("log has no timeout line:\n%s", ts.log.String())
	}
}

// TestHangUpStopsWork: a client that leaves mid-stream cancels its rows:
// the sampler stops (ErrCancelled) long before the request's steps are
// done, the slot frees, and the next request gets the answer it gets on a
// fresh server.
func TestHangUpStopsWork(t *testing.T) {
	dir := tinyDiffusion(t, 4, false)
	var mu sync.Mutex
	var errs []error
	var steps []int
	ts := newTestServer(t, dir, Config{MaxQueue: 1}, func(q *queue) {
		q.afterBatch = func(r *diffusion.GenResult, err error) {
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
			if r != nil {
				steps = append(steps, r.Steps)
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.url+"/v1/completions",
		strings.NewReader(`{"prompt": "Once upon a time", "max_tokens": 200, "steps": 200, "stream": true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil { // the first block's chunk
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "the cancelled batch", func() bool { mu.Lock(); defer mu.Unlock(); return len(errs) == 1 })
	if !errors.Is(errs[0], diffusion.ErrCancelled) {
		t.Fatalf("the hung-up request's batch ended with %v, want ErrCancelled", errs[0])
	}
	waitFor(t, "the slot", func() bool { ts.q.mu.Lock(); defer ts.q.mu.Unlock(); return ts.q.admitted == 0 })
	body := `{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7, "seed": 4, "return_token_ids": true}`
	code, got, _ := post(t, ts.url+"/v1/completions", body)
	fresh := newTestServer(t, dir, Config{})
	_, want, _ := post(t, fresh.url+"/v1/completions", body)
	if code != 200 || !slices.Equal(tokenIDs(got, 0), tokenIDs(want, 0)) {
		t.Fatalf("after a hang-up: %d %v, fresh server %v", code, got, want)
	}
	waitFor(t, "the log line", func() bool { return strings.Contains(ts.log.String(), "client gone") })
}

// TestAuth: with an API key every /v1 route needs the bearer token;
// /health does not.
func TestAuth(t *testing.T) {
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{APIKey: "sekrit"})
	for _, c := range []struct {
		header string
		code   int
	}{{"", 401}, {"Bearer wrong", 401}, {"sekrit", 401}, {"Bearer sekrit", 200}} {
		req, _ := http.NewRequest("GET", ts.url+"/v1/models", nil)
		if c.header != "" {
			req.Header.Set("Authorization", c.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != c.code || (c.code == 401 && out["error"] == nil) {
			t.Fatalf("Authorization %q: %d %v", c.header, resp.StatusCode, out)
		}
	}
	if code, out, _ := post(t, ts.url+"/v1/completions", `{"prompt": "hi"}`); code != 401 {
		t.Fatalf("completion without key: %d %v", code, out)
	}
	resp, err := http.Get(ts.url + "/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestModelsAndLog: /v1/models lists the model; each request logs one
// line with its id, tokens, steps and time.
func TestModelsAndLog(t *testing.T) {
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{Name: "tiny"})
	resp, err := http.Get(ts.url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct{ ID, Object string }
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != "tiny" || list.Data[0].Object != "model" {
		t.Fatalf("models: %+v", list)
	}
	code, out, hdr := post(t, ts.url+"/v1/completions", `{"model": "tiny", "prompt": "hi", "max_tokens": 8, "steps": 4, "block_length": 8}`)
	if code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	id := hdr.Get("X-Request-Id")
	waitFor(t, "the log line", func() bool { return strings.Contains(ts.log.String(), "/v1/completions") })
	var line string
	for _, l := range strings.Split(ts.log.String(), "\n") {
		if strings.Contains(l, id) && strings.Contains(l, "/v1/completions") {
			line = l
		}
	}
	n := int(out["usage"].(map[string]any)["completion_tokens"].(float64))
	if line == "" || !strings.Contains(line, " 200 ") || !strings.Contains(line, fmt.Sprintf("tokens=%d steps=4", n)) || !strings.Contains(line, "s ") {
		t.Fatalf("log line for %s: %q\n%s", id, line, ts.log.String())
	}
}

// TestShutdown: when Serve's context ends, a request in flight finishes
// (200), new connections are refused and Serve returns nil; past the grace
// period the rest are cancelled.
func TestShutdown(t *testing.T) {
	dir := tinyDiffusion(t, 0, false)
	for _, grace := range []time.Duration{10 * time.Second, 50 * time.Millisecond} {
		h := newHold()
		ck, err := model.Open(dir, model.OpenOptions{Backend: cpu.New(2)})
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(ck, Config{})
		if err != nil {
			t.Fatal(err)
		}
		h.hook(s.q)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- s.Serve(ctx, l, grace) }()
		url := "http://" + l.Addr().String()
		type reply struct {
			code int
			err  error
		}
		got := make(chan reply, 1)
		go func() {
			resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt": "hi", "max_tokens": 4}`))
			if err != nil {
				got <- reply{0, err}
				return
			}
			resp.Body.Close()
			got <- reply{resp.StatusCode, nil}
		}()
		waitFor(t, "the request in flight", func() bool { _, r := s.q.stats(); return r == 1 })
		stop()
		waitFor(t, "the listener to close", func() bool {
			c, err := net.Dial("tcp", l.Addr().String())
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		if grace > time.Second {
			h.open()
			if r := <-got; r.err != nil || r.code != 200 {
				t.Fatalf("in-flight request during shutdown: %d %v", r.code, r.err)
			}
		} else {
			// The worker is held past the grace period: the request is
			// cancelled, then the worker is let go.
			r := <-got
			h.open()
			if r.err == nil && r.code == 200 {
				t.Fatalf("a request past the grace period finished: %d", r.code)
			}
		}
		if err := <-served; err != nil {
			t.Fatalf("grace %v: Serve returned %v", grace, err)
		}
		s.Close()
	}
}

// TestHangUpWhileQueued: a request whose client leaves while it waits in
// the queue is dropped from it and frees its slot; it never reaches the
// model.
func TestHangUpWhileQueued(t *testing.T) {
	h := newHold()
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{MaxQueue: 2}, h.hook)
	defer h.open()
	first := make(chan int, 1)
	go func() {
		code, _, _ := post(t, ts.url+"/v1/completions", `{"prompt": "hi", "max_tokens": 4}`)
		first <- code
	}()
	waitFor(t, "the first request running", func() bool { _, r := ts.q.stats(); return r == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.url+"/v1/completions", strings.NewReader(`{"prompt": "hello", "max_tokens": 4}`))
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, "the second request queued", func() bool { w, _ := ts.q.stats(); return w == 1 })
	cancel()
	<-errc
	waitFor(t, "the queue to drop it", func() bool {
		ts.q.mu.Lock()
		defer ts.q.mu.Unlock()
		return len(ts.q.waiting) == 0 && ts.q.admitted == 1
	})
	h.open()
	if code := <-first; code != 200 {
		t.Fatalf("the running request: %d", code)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.rows) != 1 {
		t.Fatalf("%d batches ran, want only the first's", len(h.rows))
	}
}

// TestPartialStream: with dllm_partial a one-block stream also sends the
// whole sequence after steps (masked positions as a glyph, fewer each
// time, none at the end); its text chunks still join into the answer.
func TestPartialStream(t *testing.T) {
	ts := newTestServer(t, tinyDiffusion(t, 0, false), Config{})
	body := `{"prompt": "Once upon a time", "max_tokens": 12, "steps": 12, "block_length": 12, "temperature": 0.7, "seed": 3, "stop_at_eos": false}`
	_, plain, _ := post(t, ts.url+"/v1/completions", body)
	chunks := stream(t, ts.url+"/v1/completions", strings.Replace(body, "{", `{"stream": true, "dllm_partial": true, `, 1))
	var partials []string
	for _, c := range chunks {
		for _, ch := range c["choices"].([]any) {
			if p, ok := ch.(map[string]any)["dllm_partial"].(string); ok {
				partials = append(partials, p)
			}
		}
	}
	if len(partials) < 2 {
		t.Fatalf("%d partial views for 12 steps", len(partials))
	}
	for i := 1; i < len(partials); i++ {
		if strings.Count(partials[i], maskGlyph) > strings.Count(partials[i-1], maskGlyph) {
			t.Fatalf("masks grew: %q then %q", partials[i-1], partials[i])
		}
	}
	if strings.Count(partials[0], maskGlyph) == 0 || strings.Contains(partials[len(partials)-1], maskGlyph) {
		t.Fatalf("partial views %q", partials)
	}
	text, _, _ := concat(chunks)
	if text[0] != completionText(t, plain, 0) {
		t.Fatalf("stream %q, answer %q", text[0], completionText(t, plain, 0))
	}
}
