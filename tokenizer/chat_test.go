package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type chatFixture struct {
	Generator string `json:"generator"`
	Cases     []struct {
		Template     string    `json:"template"`
		Conversation string    `json:"conversation"`
		GenPrompt    bool      `json:"add_generation_prompt"`
		Messages     []Message `json:"messages"`
		JSText       *string   `json:"text"` // @huggingface/jinja
		JSError      string    `json:"error"`
		Text         *string   `json:"jinja2_text"` // Python Jinja2 as transformers sets it up
		Error        string    `json:"jinja2_error"`
	} `json:"cases"`
}

// repoFile is a path relative to the repository root.
func repoFile(rel string) string { return filepath.Join("..", rel) }

// TestChatTemplateFixtures renders every conversation the reference scripts
// rendered with @huggingface/jinja and with Python's Jinja2 (set up as
// transformers does) and compares byte for byte. Where the two references
// disagree (@huggingface/jinja 0.5.11 ignores the argument of lstrip and
// rstrip), Jinja2 decides.
func TestChatTemplateFixtures(t *testing.T) {
	data, err := os.ReadFile(repoFile("testdata/reference/fixtures/chat_templates.json"))
	if err != nil {
		t.Fatal(err)
	}
	var fx chatFixture
	if err := json.Unmarshal(data, &fx); err != nil {
		t.Fatal(err)
	}
	load := map[string]func(t *testing.T) *ChatTemplate{
		"qwen3": func(t *testing.T) *ChatTemplate {
			return mustChat(t, filepath.Join(sharedDir(t), "tokenizers/qwen3"), "")
		},
		"llama3": func(t *testing.T) *ChatTemplate {
			return mustChat(t, filepath.Join(sharedDir(t), "tokenizers/llama3"), "")
		},
		"stories260K-chatml": func(t *testing.T) *ChatTemplate {
			return mustChat(t, filepath.Join(sharedDir(t), "models/stories260K"), repoFile("testdata/chat/chatml.jinja"))
		},
		"features": func(t *testing.T) *ChatTemplate { return mustChat(t, repoFile("testdata/chat/features"), "") },
	}
	byTemplate := map[string]int{}
	for _, c := range fx.Cases {
		byTemplate[c.Template]++
	}
	if len(byTemplate) != len(load) || len(fx.Cases) < 80 {
		t.Fatalf("fixture has %d cases over %v", len(fx.Cases), byTemplate)
	}
	for name, open := range load {
		t.Run(name, func(t *testing.T) {
			ct := open(t)
			n := 0
			for _, c := range fx.Cases {
				if c.Template != name {
					continue
				}
				got, err := ct.Render(c.Messages, c.GenPrompt)
				if c.Text == nil {
					if err == nil || !strings.Contains(err.Error(), c.Error) {
						t.Errorf("%s gen=%v: want error %q, got %q, %v", c.Conversation, c.GenPrompt, c.Error, got, err)
					}
					n++
					continue
				}
				if err != nil {
					t.Errorf("%s gen=%v: %v", c.Conversation, c.GenPrompt, err)
					continue
				}
				if got != *c.Text {
					t.Errorf("%s gen=%v:\n got %q\nwant %q", c.Conversation, c.GenPrompt, got, *c.Text)
				}
				if c.JSText == nil || *c.JSText != *c.Text {
					t.Logf("%s gen=%v: @huggingface/jinja differs from Jinja2", c.Conversation, c.GenPrompt)
				}
				n++
			}
			if n != byTemplate[name] {
				t.Fatalf("checked %d of %d", n, byTemplate[name])
			}
		})
	}
}

func mustChat(t *testing.T, dir, override string) *ChatTemplate {
	t.Helper()
	ct, err := LoadChatTemplate(dir, override)
	if err != nil {
		t.Fatal(err)
	}
	if ct == nil {
		t.Fatalf("%s: no chat template", dir)
	}
	return ct
}

func TestChatTemplateEndOfTurn(t *testing.T) {
	s := sharedDir(t)
	for _, c := range []struct{ dir, override, want string }{
		{filepath.Join(s, "tokenizers/qwen3"), "", "<|im_end|>"},
		{filepath.Join(s, "tokenizers/llama3"), "", "<|eot_id|>"},
		{filepath.Join(s, "models/stories260K"), repoFile("testdata/chat/chatml.jinja"), "</s>"},
	} {
		if got := mustChat(t, c.dir, c.override).EndOfTurn(); got != c.want {
			t.Errorf("%s: EndOfTurn %q, want %q", c.dir, got, c.want)
		}
	}
}

func TestLoadChatTemplateErrors(t *testing.T) {
	dir := t.TempDir()
	// no tokenizer_config.json, no override: no template, no error
	if ct, err := LoadChatTemplate(dir, ""); ct != nil || err != nil {
		t.Fatalf("got %v, %v", ct, err)
	}
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("tokenizer_config.json", `{"eos_token": "</s>"}`)
	if ct, err := LoadChatTemplate(dir, ""); ct != nil || err != nil {
		t.Fatalf("got %v, %v", ct, err)
	}
	for _, c := range []struct{ cfg, want string }{
		{`{"chat_template": 3}`, "neither a string"},
		{`{"chat_template": [{"name": "rag", "template": "x"}]}`, `no template named "default"`},
		{`{"chat_template": "{% for m in messages %}"}`, "tokenizer_config.json"},
		{`{not json`, "not valid JSON"},
	} {
		write("tokenizer_config.json", c.cfg)
		if _, err := LoadChatTemplate(dir, ""); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.cfg, err, c.want)
		}
	}
	write("tokenizer_config.json", `{"eos_token": "</s>"}`)
	if _, err := LoadChatTemplate(dir, filepath.Join(dir, "missing.jinja")); err == nil {
		t.Error("missing override file accepted")
	}
	// an override as Jinja text and as JSON with a chat_template field
	j := write("t.jinja", "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}")
	js := write("t.json", `{"chat_template": "{% for m in messages %}[{{ m.content }}]{% endfor %}"}`)
	for p, want := range map[string]string{j: "hi</s>", js: "[hi]"} {
		ct := mustChat(t, dir, p)
		got, err := ct.Render([]Message{{Role: "user", Content: "hi"}}, false)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", p, got, err, want)
		}
	}
	// a template that raises: the message is in the error
	r := write("raise.jinja", "{{ raise_exception('roles must alternate') }}")
	_, err := mustChat(t, dir, r).Render([]Message{{Role: "user", Content: "x"}}, true)
	if err == nil || !strings.Contains(err.Error(), "roles must alternate") {
		t.Errorf("raise_exception: %v", err)
	}
}

func TestParseMessages(t *testing.T) {
	for _, s := range []string{`[{"role": "user", "content": "hi"}]`, `{"messages": [{"role": "user", "content": "hi"}]}`} {
		m, err := ParseMessages([]byte(s))
		if err != nil || len(m) != 1 || m[0] != (Message{"user", "hi"}) {
			t.Errorf("%s: %v, %v", s, m, err)
		}
	}
	for s, want := range map[string]string{
		`[]`:                 "empty conversation",
		`{"messages": []}`:   "empty conversation",
		`[{"content": "x"}]`: `message 1 has no "role"`,
		`[{"role": "user", "content": "x"}, {"role": "assistant"}]`: `message 2 has no "content"`,
		`[{"role": "user", "content": 3}]`:                          `message 1 has a non-string "content"`,
		`[null]`:                                                    "message 1 is not an object",
		`{"prompt": "x"}`:                                           "want a JSON array",
		`not json`:                                                  "want a JSON array",
	} {
		if _, err := ParseMessages([]byte(s)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", s, err, want)
		}
	}
}
