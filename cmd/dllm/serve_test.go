package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startServe runs the built binary's serve on a free port and returns its
// URL and a function that sends SIGTERM and returns the exit code and
// stderr.
func startServe(t *testing.T, bin, dir string, extra ...string) (string, func() (int, string)) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", dir, "--port", "0", "--device", "cpu", "--threads", "1"}, extra...)...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var all strings.Builder
	addr := make(chan string, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		re := regexp.MustCompile(`on (http://\S+)`)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			mu.Lock()
			all.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	stop := func() (int, string) {
		cmd.Process.Signal(syscall.SIGTERM)
		<-ended
		cmd.Wait()
		mu.Lock()
		defer mu.Unlock()
		return cmd.ProcessState.ExitCode(), all.String()
	}
	select {
	case u := <-addr:
		return u, stop
	case <-time.After(60 * time.Second):
		_, log := stop()
		t.Fatalf("serve printed no address:\n%s", log)
	case <-ended:
		_, log := stop()
		t.Fatalf("serve ended:\n%s", log)
	}
	return "", nil
}

func postJSON(t *testing.T, url, body string) map[string]any {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %d %v %v", body, resp.StatusCode, out, err)
	}
	return out
}

// TestServeEqualsGenerate: the binary's serve, on a short conversion of the
// tiny model, answers a completion with the tokens and text 'dllm generate
// --stop-at-eos' prints for the same settings, concurrent requests as
// sequential ones, and exits 0 on SIGTERM.
func TestServeEqualsGenerate(t *testing.T) {
	bin := buildBinary(t)
	out, _ := convertTiny(t)
	dir := filepath.Join(out, "final")
	tmpl := filepath.Join(t.TempDir(), "chat.jinja")
	os.WriteFile(tmpl, []byte(`{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}`), 0o644)
	url, stop := startServe(t, bin, dir, "--chat-template", tmpl)
	cases := []struct{ body, flags string }{
		{`{"prompt": "Once upon a time", "max_tokens": 16, "steps": 8, "seed": 3, "temperature": 0.7}`,
			"--gen-len 16 --steps 8 --seed 3 --temperature 0.7"},
		{`{"prompt": "The dog", "max_tokens": 12, "steps": 12, "block_length": 4, "alg": "margin", "top_p": 0.9, "temperature": 1, "seed": 9, "n": 2}`,
			"--gen-len 12 --steps 12 --block-len 4 --alg margin --top-p 0.9 --temperature 1 --seed 9 --batch 2"},
		{`{"prompt": "A cat", "max_tokens": 16, "threshold": 0.2, "steps": 16}`, "--gen-len 16 --threshold 0.2 --steps 16"},
	}
	var answers []map[string]any
	for _, c := range cases {
		var req map[string]any
		json.Unmarshal([]byte(c.body), &req)
		req["return_token_ids"], req["echo"] = true, true
		b, _ := json.Marshal(req)
		got := postJSON(t, url+"/v1/completions", string(b))
		answers = append(answers, got)
		args := append([]string{"generate", dir, "--prompt", req["prompt"].(string), "--stop-at-eos", "--device", "cpu", "--threads", "1"},
			strings.Fields(c.flags)...)
		jsonOut, _, err := dllm(t, append(args, "--json")...)
		if err != nil {
			t.Fatal(err)
		}
		var gen struct {
			Samples []struct{ IDs []int32 }
		}
		json.Unmarshal([]byte(jsonOut), &gen)
		text, _, err := dllm(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
		for i, s := range gen.Samples {
			ch := got["choices"].([]any)[i].(map[string]any)
			var ids []int32
			for _, v := range ch["token_ids"].([]any) {
				ids = append(ids, int32(v.(float64)))
			}
			if !slices.Equal(ids, s.IDs) {
				t.Fatalf("%s choice %d: serve %v, generate %v", c.body, i, ids, s.IDs)
			}
			want := lines[0]
			if len(gen.Samples) > 1 {
				want = lines[2*i+1] // after "--- sample i"
			}
			if ch["text"] != want {
				t.Fatalf("%s choice %d: serve (echo) %q, generate printed %q", c.body, i, ch["text"], want)
			}
		}
	}
	// A chat answer is what generate --chat prints.
	for _, seed := range []string{"1", "2"} {
		got := postJSON(t, url+"/v1/chat/completions", `{"messages": [{"role": "user", "content": "Tell me a story"}],
			"max_tokens": 16, "steps": 8, "temperature": 0.8, "seed": `+seed+`}`)
		want, _, err := dllm(t, "generate", dir, "--chat", "--prompt", "Tell me a story", "--chat-template", tmpl, "--gen-len", "16",
			"--steps", "8", "--temperature", "0.8", "--seed", seed, "--device", "cpu", "--threads", "1")
		if err != nil {
			t.Fatal(err)
		}
		if c := got["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)["content"]; c != strings.TrimSuffix(want, "\n") {
			t.Fatalf("chat seed %s: serve %q, generate --chat %q", seed, c, want)
		}
	}
	// The same requests at once.
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := strings.Replace(c.body, "{", `{"return_token_ids": true, "echo": true, `, 1)
			got := postJSON(t, url+"/v1/completions", body)
			for k, ch := range got["choices"].([]any) {
				if fmt.Sprint(ch.(map[string]any)["token_ids"]) != fmt.Sprint(answers[i]["choices"].([]any)[k].(map[string]any)["token_ids"]) {
					t.Errorf("request %d choice %d concurrent: %v, sequential %v", i, k, ch, answers[i]["choices"].([]any)[k])
				}
			}
		}()
	}
	wg.Wait()
	code, log := stop()
	if code != 0 || !strings.Contains(log, "dllm serve: stopped") {
		t.Fatalf("SIGTERM: exit %d\n%s", code, log)
	}
	if n := strings.Count(log, "POST /v1/completions 200"); n != 2*len(cases) {
		t.Fatalf("%d request log lines, want %d:\n%s", n, 2*len(cases), log)
	}
}

// nanCopy copies the files of the model folder src with every
// safetensors file's values set to NaN (loading them is refused: a refusal
// that comes first shows that it came before the weights were loaded), and
// config.json through edit (nil: as it is).
func nanCopy(t *testing.T, src string, edit func(cfg map[string]any)) string {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	d := t.TempDir()
	for _, en := range entries {
		if en.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case en.Name() == "config.json" && edit != nil:
			var cfg map[string]any
			if err := json.Unmarshal(b, &cfg); err != nil {
				t.Fatal(err)
			}
			edit(cfg)
			b, _ = json.Marshal(cfg)
		case strings.HasSuffix(en.Name(), ".safetensors"):
			for i := 8 + int(binary.LittleEndian.Uint64(b)); i < len(b); i++ {
				b[i] = 0xff
			}
		}
		if err := os.WriteFile(filepath.Join(d, en.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// nanDiffusion is nanCopy of the tiny llama (256 positions) made a
// diffusion checkpoint.
func nanDiffusion(t *testing.T, shift bool) string {
	return nanCopy(t, filepath.Join(moduleRoot(t), "testdata/tiny/llama"), func(cfg map[string]any) {
		cfg["dllm"] = map[string]any{"mask_token_id": 3, "shift": shift, "attention": "bidirectional"}
	})
}

// TestServeBadFlags: flags no request could meet are refused with one line,
// exit 2, before the weights are loaded (nanDiffusion).
func TestServeBadFlags(t *testing.T) {
	dir := filepath.Join(moduleRoot(t), "testdata/tiny/llama") // 256 positions
	diff, shift := nanDiffusion(t, false), nanDiffusion(t, true)
	if _, _, err := dllm(t, "serve", diff, "--device", "cpu", "--threads", "1", "--max-batch", "1"); err == nil || !strings.Contains(err.Error(), "NaN") {
		t.Fatalf("the NaN copy: %v, want its weights refused", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", dir, "--max-batch", "0"}, "--max-batch is out of range"},
		{[]string{"serve", dir, "--port", "70000"}, "--port is out of range"},
		{[]string{"serve", dir, "--max-body", "13"}, "--max-body 13 is below 1024 bytes"},
		{[]string{"serve", dir, "--max-body", "0"}, "--max-body 0 is below 1024 bytes"},
		{[]string{"serve", dir, "--max-tokens", "65", "--max-model-len", "64"}, "--max-tokens 65 is more than --max-model-len 64 (a request's prompt and max_tokens together): lower it to 64 or less"},
		{[]string{"serve", diff, "--max-model-len", "257"}, "--max-model-len 257 is beyond the model's 256 positions (max_position_embeddings)"},
		{[]string{"serve", diff, "--max-tokens", "257"}, "--max-tokens 257 is more than the model's positions 256"},
		{[]string{"serve", shift, "--max-tokens", "256"}, "--max-tokens 256 leaves no room within the model's positions 256 for the prompt (this model needs at least one token): lower it to 255 or less"},
		{[]string{"serve", shift, "--max-tokens", "64", "--max-model-len", "64"}, "lower it to 63 or less"},
		{[]string{"serve", shift, "--max-model-len", "1"}, "--max-model-len 1 leaves no room to generate"},
	} {
		_, _, err := dllm(t, append(c.args, "--device", "cpu", "--threads", "1")...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") || exitCode(err) != 2 {
			t.Errorf("%v: %v (exit %d), want one line with %q, exit 2", c.args[2:], err, exitCode(err), c.want)
		}
	}
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"serve", filepath.Join(t.TempDir(), "none")}, "no such folder", 2},
		{[]string{"serve", dir, "--device", "cpu"}, "not a diffusion checkpoint", 2},
	} {
		_, _, err := dllm(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != c.code {
			t.Fatalf("%v: %v (exit %d), want an error about %s, exit %d", c.args, err, exitCode(err), c.want, c.code)
		}
	}
	// At the limits, the flags pass to loading the weights.
	for _, args := range [][]string{
		{"serve", diff, "--max-tokens", "256"},
		{"serve", diff, "--max-body", "1024"},
		{"serve", diff, "--max-tokens", "64", "--max-model-len", "64"},
		{"serve", shift, "--max-tokens", "63", "--max-model-len", "64"},
		{"serve", shift, "--max-model-len", "2"},
	} {
		if _, _, err := dllm(t, append(args, "--device", "cpu", "--threads", "1", "--max-batch", "1")...); err == nil || !strings.Contains(err.Error(), "NaN") {
			t.Errorf("%v: %v, want the weights refused", args[2:], err)
		}
	}
}
