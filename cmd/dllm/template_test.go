package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRoot()
	var out, errb bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(""))
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	err := cmd.Execute()
	return out.String(), err
}

// TestTemplateCommand prints exactly the fixture's rendering, and nothing else.
func TestTemplateCommand(t *testing.T) {
	shared := filepath.Dir(sharedModels(t))
	data, err := os.ReadFile("../../testdata/reference/fixtures/chat_templates.json")
	if err != nil {
		t.Fatal(err)
	}
	var fx struct {
		Cases []struct {
			Template, Conversation string
			GenPrompt              bool            `json:"add_generation_prompt"`
			Messages               json.RawMessage `json:"messages"`
			Text                   string          `json:"jinja2_text"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(data, &fx); err != nil {
		t.Fatal(err)
	}
	dirs := map[string][]string{
		"qwen3":              {filepath.Join(shared, "tokenizers/qwen3")},
		"llama3":             {filepath.Join(shared, "tokenizers/llama3")},
		"stories260K-chatml": {filepath.Join(shared, "models/stories260K"), "--chat-template", "../../testdata/chat/chatml.jinja"},
	}
	tmp := t.TempDir()
	n := 0
	for _, c := range fx.Cases {
		d, ok := dirs[c.Template]
		if !ok || (c.Conversation != "multi-turn" && c.Conversation != "whitespace-unicode") {
			continue
		}
		msgs := filepath.Join(tmp, "m.json")
		os.WriteFile(msgs, c.Messages, 0o644)
		args := append([]string{"template"}, d...)
		args = append(args, "--messages", msgs)
		if c.GenPrompt {
			args = append(args, "--generation-prompt")
		}
		got, err := runCmd(t, args...)
		if err != nil || got != c.Text {
			t.Errorf("%s %s gen=%v: got %q, %v\nwant %q", c.Template, c.Conversation, c.GenPrompt, got, err, c.Text)
		}
		n++
	}
	if n != 12 {
		t.Fatalf("ran %d cases", n)
	}

	k := 0
	write := func(s string) string {
		k++
		p := filepath.Join(tmp, fmt.Sprintf("bad%d.json", k))
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	qwen := dirs["qwen3"][0]
	ok := write(`[{"role": "user", "content": "hi"}]`)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"template", qwen}, "--messages FILE.json is required"},
		{[]string{"template", qwen, "--messages", filepath.Join(tmp, "none.json")}, "--messages: no such file"},
		{[]string{"template", filepath.Join(shared, "models/stories260K"), "--messages", ok}, "pass --chat-template FILE"},
		{[]string{"template", qwen, "--messages", write(`[{"role": "user"}]`)}, `message 1 has no "content"`},
		{[]string{"template", qwen, "--messages", write(`[]`)}, "empty conversation"},
		{[]string{"template", qwen, "--messages", write(`{"role": "user"}`)}, "want a JSON array"},
	} {
		out, err := runCmd(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || out != "" {
			t.Errorf("%v: %q, %v; want error %q", c.args, out, err, c.want)
		}
		if strings.Contains(c.want, "--chat-template") && exitCode(err) != 2 {
			t.Errorf("%v: exit %d, want 2 (bad input)", c.args, exitCode(err))
		}
	}
}
