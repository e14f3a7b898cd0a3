package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/tokenizer"
)

// sftTiny converts the tiny llama on a few conversations with --sft.
func sftTiny(t *testing.T, extra ...string) (final, data string) {
	t.Helper()
	var b strings.Builder
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, `{"messages": [{"role": "user", "content": "who is cat %d"}, {"role": "assistant", "content": "a cat"}]}`+"\n", i)
	}
	data = filepath.Join(t.TempDir(), "chat.jsonl")
	os.WriteFile(data, []byte(b.String()), 0o644)
	out := filepath.Join(t.TempDir(), "run")
	root := moduleRoot(t)
	args := append([]string{"convert", filepath.Join(root, "testdata/tiny/llama"), "--sft", "--chat-template",
		filepath.Join(root, "testdata/chat/chatml.jinja"), "--data", data, "--out", out, "--steps", "2", "--seq-len", "64",
		"--batch-size", "2", "--eval-fraction", "0.2", "--eval-rows", "2", "--eval-mc", "1", "--threads", "2", "--quiet"}, extra...)
	if _, stderr, err := dllm(t, args...); err != nil {
		t.Fatalf("convert --sft: %v\n%s", err, stderr)
	}
	return filepath.Join(out, "final"), data
}

func TestChatCommands(t *testing.T) {
	final, data := sftTiny(t)
	gen := []string{"--gen-len", "8", "--steps", "8", "--threads", "2"}

	// generate --chat is generate on the rendered prompt, cut at the end of
	// the turn, printed alone.
	ct, err := tokenizer.LoadChatTemplate(final, "")
	if err != nil || ct == nil {
		t.Fatal(ct, err)
	}
	tok, err := tokenizer.Load(final)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := ct.Render([]tokenizer.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "who is cat 3"}}, true)
	var ids []string
	for _, id := range tok.Encode(text, false) {
		ids = append(ids, fmt.Sprint(id))
	}
	raw, stderr, err := dllm(t, append([]string{"generate", final, "--ids", strings.Join(ids, ","), "--json", "--stop-at-eos"}, gen...)...)
	if err != nil {
		t.Fatalf("generate --ids: %v\n%s", err, stderr)
	}
	var res struct {
		Samples []struct{ IDs []int } `json:"samples"`
	}
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		t.Fatal(err)
	}
	var ans []int
	for _, id := range res.Samples[0].IDs {
		if id == tok.EOS() {
			break
		}
		ans = append(ans, id)
	}
	want := strings.TrimSpace(tok.Decode(ans, true)) + "\n"
	got, stderr, err := dllm(t, append([]string{"generate", final, "--chat", "--system", "be brief", "--prompt", "who is cat 3"}, gen...)...)
	if err != nil || got != want {
		t.Fatalf("generate --chat: %q, %v (%s); want %q", got, err, stderr, want)
	}

	// chat reads a message per line from a non-terminal stdin and prints one
	// answer per message; the first is generate --chat's.
	root := newRoot()
	var o, e bytes.Buffer
	root.SetIn(strings.NewReader("who is cat 3\n\nand then\n/reset\nwho is cat 3\n"))
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(append([]string{"chat", final, "--system", "be brief"}, gen...))
	if err := root.Execute(); err != nil {
		t.Fatalf("chat: %v\n%s", err, e.String())
	}
	lines := strings.Split(o.String(), "\n")
	if len(lines) != 4 || lines[0]+"\n" != want || lines[2]+"\n" != want || lines[3] != "" {
		t.Fatalf("chat printed %q; want 3 answers, the first and third %q", o.String(), want)
	}

	// eval --sft scores response tokens only, or with --sft-pad eos also
	// the padding: 10 rows of 64 tokens.
	scored := func(pad string) int64 {
		out, stderr, err := dllm(t, "eval", final, "--data", data, "--sft", "--sft-pad", pad, "--seq-len", "64", "--mc", "1",
			"--threads", "2", "--json")
		if err != nil {
			t.Fatalf("eval --sft: %v\n%s", err, stderr)
		}
		var r struct{ Tokens int64 }
		json.Unmarshal([]byte(out), &r)
		return r.Tokens
	}
	resp := int64(len(tok.Encode("a cat</s>", false))) * 10
	if n := scored("none"); n != resp {
		t.Errorf("eval --sft scored %d tokens, want the %d response tokens", n, resp)
	}
	c, _ := tokenizer.LoadChatTemplate(final, "")
	p, _ := c.Render([]tokenizer.Message{{Role: "user", Content: "who is cat 3"}}, true)
	if n := scored("eos"); n != 10*64-10*int64(len(tok.Encode(p, false))) {
		t.Errorf("eval --sft --sft-pad eos scored %d tokens", n)
	}

	// No template: one line saying what to pass.
	bare := filepath.Join(t.TempDir(), "bare")
	os.MkdirAll(bare, 0o755)
	entries, _ := os.ReadDir(final)
	for _, en := range entries {
		b, _ := os.ReadFile(filepath.Join(final, en.Name()))
		if en.Name() == "tokenizer_config.json" {
			var m map[string]any
			json.Unmarshal(b, &m)
			delete(m, "chat_template")
			b, _ = json.Marshal(m)
		}
		os.WriteFile(filepath.Join(bare, en.Name()), b, 0o644)
	}
	// convert --sft and eval --sft: corpus' refusal of a "messages" row
	// (corpus.ErrNoChatTemplate), exit 2 as the others.
	runOut := filepath.Join(t.TempDir(), "run")
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"generate", bare, "--chat", "--prompt", "hi"}, 2},
		{[]string{"chat", bare}, 2},
		{[]string{"eval", bare, "--task", writeFile(t, "g.jsonl", `{"prompt": "a", "answer": "b"}`), "--chat"}, 2},
		{[]string{"eval", bare, "--data", data, "--sft"}, 2},
		{[]string{"convert", filepath.Join(moduleRoot(t), "testdata/tiny/llama"), "--sft", "--data", data, "--out", runOut, "--threads", "1", "--quiet"}, 2},
	} {
		_, _, err := dllm(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), "pass --chat-template") || strings.Contains(err.Error(), "\n") || exitCode(err) != c.code {
			t.Errorf("%v: %v (exit %d); want one line saying to pass --chat-template, exit %d", c.args, err, exitCode(err), c.code)
		}
	}
	if _, err := os.Stat(runOut); !os.IsNotExist(err) {
		t.Errorf("the refused convert left %s: %v", runOut, err)
	}
}
