package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/ardanlabs/jinja"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatTemplate is a compiled Jinja chat template with the special tokens
// transformers passes to it.
type ChatTemplate struct {
	// Source is the Jinja text; Path the file it was read from.
	Source, Path string

	tmpl *jinja.Template
	// vars: bos_token, eos_token, ... as strings, only those set, and
	// additional_special_tokens as a list (transformers' special_tokens_map).
	vars    map[string]jinja.Value
	special []string // token strings the config names, longest first
	eot     string
}

type chatConfigJSON struct {
	ChatTemplate json.RawMessage            `json:"chat_template"`
	Decoder      map[string]json.RawMessage `json:"added_tokens_decoder"`
}

var specialTokenKeys = []string{"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}

// LoadChatTemplate reads chat_template from dir/tokenizer_config.json (a
// string, or a list of {name, template} of which "default" is used), or
// from override (a file of Jinja text, or a tokenizer_config.json-like
// JSON file) when override != "". The special tokens always come from dir
// (tokenizer_config.json, then special_tokens_map.json). It returns
// (nil, nil) when there is no template.
func LoadChatTemplate(dir, override string) (*ChatTemplate, error) {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		dir = filepath.Dir(dir)
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	cfgData, err := regfile.ReadFile(cfgPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("chat template: %v", err)
	}
	raw := map[string]json.RawMessage{}
	var cfg chatConfigJSON
	if cfgData != nil {
		if err := json.Unmarshal(cfgData, &raw); err != nil {
			return nil, fmt.Errorf("chat template: %s is not valid JSON: %v", cfgPath, err)
		}
		_ = json.Unmarshal(cfgData, &cfg)
	}
	if b, err := regfile.ReadFile(filepath.Join(dir, "special_tokens_map.json")); err == nil {
		smap := map[string]json.RawMessage{}
		if json.Unmarshal(b, &smap) == nil {
			for k, v := range smap {
				if _, ok := raw[k]; !ok {
					raw[k] = v
				}
			}
		}
	}

	ct := &ChatTemplate{vars: map[string]jinja.Value{}}
	if override != "" {
		b, err := regfile.ReadFile(override)
		if err != nil {
			return nil, fmt.Errorf("chat template: %v", err)
		}
		ct.Path, ct.Source = override, string(b)
		// A JSON file holding a chat_template field (e.g. another
		// tokenizer_config.json) is read like one.
		var o chatConfigJSON
		if strings.HasSuffix(override, ".json") && json.Unmarshal(b, &o) == nil && len(o.ChatTemplate) > 0 {
			src, err := pickTemplate(o.ChatTemplate)
			if err != nil {
				return nil, fmt.Errorf("chat template: %s: %v", override, err)
			}
			if src == "" {
				return nil, fmt.Errorf("chat template: %s has no chat_template", override)
			}
			ct.Source = src
		}
	} else {
		src, err := pickTemplate(cfg.ChatTemplate)
		if err != nil {
			return nil, fmt.Errorf("chat template: %s: %v", cfgPath, err)
		}
		if src == "" {
			return nil, nil
		}
		ct.Path, ct.Source = cfgPath, src
	}
	if ct.tmpl, err = jinja.Compile(ct.Source); err != nil {
		return nil, fmt.Errorf("chat template: %s: %v", ct.Path, err)
	}

	seen := map[string]bool{}
	addSpecial := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			ct.special = append(ct.special, s)
		}
	}
	for _, k := range specialTokenKeys {
		if s := tokenString(raw[k]); s != "" {
			ct.vars[k] = jinja.NewString(s)
			addSpecial(s)
		}
	}
	if r, ok := raw["additional_special_tokens"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(r, &list) == nil {
			items := make([]jinja.Value, len(list))
			for i, x := range list {
				items[i] = jinja.NewString(tokenString(x))
				addSpecial(tokenString(x))
			}
			ct.vars["additional_special_tokens"] = jinja.NewList(items)
		}
	}
	for _, r := range cfg.Decoder {
		addSpecial(tokenString(r))
	}
	sort.SliceStable(ct.special, func(i, j int) bool { return len(ct.special[i]) > len(ct.special[j]) })
	ct.eot = ct.probeEndOfTurn()
	return ct, nil
}

// pickTemplate reads chat_template: a string or a list of {name, template}.
func pickTemplate(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("chat_template is neither a string nor a list of {name, template}")
	}
	for _, t := range list {
		if t.Name == "default" {
			return t.Template, nil
		}
	}
	return "", fmt.Errorf("chat_template lists no template named \"default\"")
}

// Render renders msgs as transformers' apply_chat_template(tokenize=False)
// does: messages, add_generation_prompt, tools=None, documents=None and the
// special tokens as strings.
func (ct *ChatTemplate) Render(msgs []Message, addGenerationPrompt bool) (string, error) {
	items := make([]jinja.Value, len(msgs))
	for i, m := range msgs {
		d := jinja.NewDict()
		d.AsDict().Set("role", jinja.NewString(m.Role))
		d.AsDict().Set("content", jinja.NewString(m.Content))
		items[i] = d
	}
	data := make(map[string]jinja.Value, len(ct.vars)+4)
	for k, v := range ct.vars {
		data[k] = v
	}
	data["messages"] = jinja.NewList(items)
	data["add_generation_prompt"] = jinja.NewBool(addGenerationPrompt)
	data["tools"] = jinja.None()
	data["documents"] = jinja.None()
	s, err := ct.tmpl.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("chat template %s: %v", ct.Path, err)
	}
	return s, nil
}

// EndOfTurn is the token text that ends an assistant turn (e.g.
// "<|im_end|>", "<|eot_id|>"), "" if unknown.
func (ct *ChatTemplate) EndOfTurn() string { return ct.eot }

// SetEndOfTurn overrides the end-of-turn text found by probing.
func (ct *ChatTemplate) SetEndOfTurn(s string) { ct.eot = s }

var tagLike = regexp.MustCompile(`^(<\|[^<>|\s]+\|>|</?[A-Za-z_][^<>\s]*>|\[/?[A-Z_]+\])`)

// probeEndOfTurn renders a short exchange and reads the special token (or a
// tag-like <|...|>, </s>, [/INST]) that follows the assistant's text.
func (ct *ChatTemplate) probeEndOfTurn() string {
	const answer = "dllmProbeAnswer42"
	s, err := ct.Render([]Message{{Role: "user", Content: "dllmProbeQuestion"}, {Role: "assistant", Content: answer}}, false)
	if err != nil {
		return ""
	}
	i := strings.LastIndex(s, answer)
	if i < 0 {
		return ""
	}
	rest := s[i+len(answer):]
	for _, sp := range ct.special {
		if strings.HasPrefix(rest, sp) {
			return sp
		}
	}
	return tagLike.FindString(rest)
}

// ParseMessages reads a conversation: a JSON array of {"role", "content"}
// or an object with a "messages" array. Every message needs a string role
// and a string content; an empty conversation is an error.
func ParseMessages(data []byte) ([]Message, error) {
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var obj struct {
			Messages *[]map[string]json.RawMessage `json:"messages"`
		}
		if err2 := json.Unmarshal(data, &obj); err2 != nil || obj.Messages == nil {
			return nil, fmt.Errorf("want a JSON array of {\"role\", \"content\"} messages or an object with \"messages\"")
		}
		raw = *obj.Messages
	}
	return MessagesFromJSON(raw)
}

// MessagesFromJSON checks and converts decoded message objects: each needs
// a string role and a string content; an empty list is an error.
func MessagesFromJSON(raw []map[string]json.RawMessage) ([]Message, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("empty conversation: \"messages\" has no message")
	}
	msgs := make([]Message, len(raw))
	for i, m := range raw {
		if m == nil {
			return nil, fmt.Errorf("message %d is not an object with \"role\" and \"content\"", i+1)
		}
		for _, k := range []string{"role", "content"} {
			v, ok := m[k]
			var s string
			if !ok || json.Unmarshal(v, &s) != nil {
				what := "has no"
				if ok {
					what = "has a non-string"
				}
				return nil, fmt.Errorf("message %d %s %q", i+1, what, k)
			}
			if k == "role" {
				msgs[i].Role = s
			} else {
				msgs[i].Content = s
			}
		}
	}
	return msgs, nil
}
