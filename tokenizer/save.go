package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Save writes tokenizer.json (and tokenizer_config.json when the tokenizer
// was loaded with one) to dir. The files are the ones loaded, byte for
// byte, except that tokens registered with AddSpecialToken are appended to
// added_tokens (and to tokenizer_config.json's added_tokens_decoder when it
// has one), and mask_token is set in tokenizer_config.json after ApplyMask.
// Each file is written to a temporary file and renamed.
func (t *Tokenizer) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tokenizer: %v", err)
	}
	tj, err := t.tokenizerJSON()
	if err != nil {
		return fmt.Errorf("tokenizer: writing tokenizer.json: %v", err)
	}
	if err := writeAtomic(filepath.Join(dir, "tokenizer.json"), tj); err != nil {
		return err
	}
	if t.rawConfig == nil && t.chatTemplate == "" {
		return nil
	}
	cj, err := t.configJSON()
	if err != nil {
		return fmt.Errorf("tokenizer: writing tokenizer_config.json: %v", err)
	}
	return writeAtomic(filepath.Join(dir, "tokenizer_config.json"), cj)
}

func (t *Tokenizer) tokenizerJSON() ([]byte, error) {
	doc := t.rawJSON
	if len(t.newTokens) == 0 {
		return doc, nil
	}
	a, b, ok, err := memberSpan(doc, "added_tokens")
	if err != nil {
		return nil, err
	}
	if !ok || bytes.Equal(bytes.TrimSpace(doc[a:b]), []byte("null")) {
		list := make([]AddedToken, len(t.newTokens))
		copy(list, t.newTokens)
		if ok {
			return splice(doc, a, b, mustMarshal(list, "", "")), nil
		}
		oa, ob := objectSpan(doc)
		return appendMember(doc, oa, ob, "added_tokens", list)
	}
	for _, n := range t.newTokens {
		if doc, err = appendMember(doc, a, b, "", n); err != nil {
			return nil, err
		}
		if a, b, _, err = memberSpan(doc, "added_tokens"); err != nil {
			return nil, err
		}
	}
	return doc, nil
}

// addedDecoderEntry is the layout of tokenizer_config.json's
// added_tokens_decoder values (keys sorted, as transformers writes them).
type addedDecoderEntry struct {
	Content    string `json:"content"`
	LStrip     bool   `json:"lstrip"`
	Normalized bool   `json:"normalized"`
	RStrip     bool   `json:"rstrip"`
	SingleWord bool   `json:"single_word"`
	Special    bool   `json:"special"`
}

// SetChatTemplate makes Save write chat_template into
// tokenizer_config.json (creating the file when there was none).
func (t *Tokenizer) SetChatTemplate(src string) { t.chatTemplate = src }

func (t *Tokenizer) configJSON() ([]byte, error) {
	doc := t.rawConfig
	if doc == nil {
		doc = []byte("{}\n")
	}
	if t.chatTemplate != "" {
		a, b, ok, err := memberSpan(doc, "chat_template")
		if err != nil {
			return nil, err
		}
		if ok {
			doc = splice(doc, a, b, mustMarshal(t.chatTemplate, "", ""))
		} else {
			oa, ob := objectSpan(doc)
			if doc, err = appendMember(doc, oa, ob, "chat_template", t.chatTemplate); err != nil {
				return nil, err
			}
		}
	}
	if len(t.newTokens) > 0 {
		a, b, ok, err := memberSpan(doc, "added_tokens_decoder")
		if err != nil {
			return nil, err
		}
		if ok && !bytes.Equal(bytes.TrimSpace(doc[a:b]), []byte("null")) {
			for _, n := range t.newTokens {
				e := addedDecoderEntry{n.Content, n.LStrip, n.Normalized, n.RStrip, n.SingleWord, n.Special}
				if doc, err = appendMember(doc, a, b, strconv.Itoa(n.ID), e); err != nil {
					return nil, err
				}
				if a, b, _, err = memberSpan(doc, "added_tokens_decoder"); err != nil {
					return nil, err
				}
			}
		}
	}
	if t.mask != "" && t.mask != t.configMask {
		a, b, ok, err := memberSpan(doc, "mask_token")
		if err != nil {
			return nil, err
		}
		if ok {
			doc = splice(doc, a, b, mustMarshal(t.mask, "", ""))
		} else {
			oa, ob := objectSpan(doc)
			if doc, err = appendMember(doc, oa, ob, "mask_token", t.mask); err != nil {
				return nil, err
			}
		}
	}
	return doc, nil
}

// memberSpan finds the value of a top-level key of a JSON object document
// and returns its byte span.
func memberSpan(doc []byte, key string) (int, int, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	tok, err := dec.Token()
	if err != nil {
		return 0, 0, false, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return 0, 0, false, fmt.Errorf("not a JSON object")
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return 0, 0, false, err
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return 0, 0, false, err
		}
		end := int(dec.InputOffset())
		if k, _ := kt.(string); k == key {
			start := end - len(raw)
			if start < 0 || !bytes.Equal(doc[start:end], raw) {
				return 0, 0, false, fmt.Errorf("internal: cannot locate %q", key)
			}
			return start, end, true, nil
		}
	}
	return 0, 0, false, nil
}

// objectSpan is the span of the top-level object of doc.
func objectSpan(doc []byte) (int, int) {
	return bytes.IndexByte(doc, '{'), bytes.LastIndexByte(doc, '}') + 1
}

func splice(doc []byte, a, b int, v []byte) []byte {
	out := make([]byte, 0, len(doc)-(b-a)+len(v))
	out = append(out, doc[:a]...)
	out = append(out, v...)
	return append(out, doc[b:]...)
}

// lineIndent is the leading whitespace of the line holding doc[i].
func lineIndent(doc []byte, i int) string {
	s := bytes.LastIndexByte(doc[:i], '\n') + 1
	e := s
	for e < len(doc) && (doc[e] == ' ' || doc[e] == '\t') {
		e++
	}
	return string(doc[s:e])
}

// appendMember adds an element (key "") or a member to the array or object
// spanning doc[a:b], after its last entry, in the layout of the entries
// already there; the rest of doc is unchanged.
func appendMember(doc []byte, a, b int, key string, v any) ([]byte, error) {
	c := b - 1
	for c > a && doc[c] != ']' && doc[c] != '}' {
		c--
	}
	p := c - 1
	for p > a && isJSONSpace(doc[p]) {
		p--
	}
	prefix := ""
	if key != "" {
		prefix = string(mustMarshal(key, "", "")) + ": "
	}
	if p == a { // empty container
		ins := prefix + string(mustMarshal(v, "", ""))
		return splice(doc, c, c, []byte(ins)), nil
	}
	// Whitespace between the opening bracket and the first entry.
	f := a + 1
	for f < c && isJSONSpace(doc[f]) {
		f++
	}
	lead := string(doc[a+1 : f])
	var body []byte
	if strings.Contains(lead, "\n") {
		memberIndent := lead[strings.LastIndexByte(lead, '\n')+1:]
		unit := "  "
		if ci := lineIndent(doc, a); strings.HasPrefix(memberIndent, ci) && len(memberIndent) > len(ci) {
			unit = memberIndent[len(ci):]
		}
		body = mustMarshal(v, memberIndent, unit)
	} else {
		body = mustMarshal(v, "", "")
		if strings.Contains(string(doc[p:c]), " ") || lead == " " {
			lead = " "
		}
	}
	ins := "," + lead + prefix + string(body)
	return splice(doc, p+1, p+1, []byte(ins)), nil
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

func mustMarshal(v any, prefix, indent string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if prefix != "" || indent != "" {
		enc.SetIndent(prefix, indent)
	}
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// writeAtomic writes data to path through a temporary file in the same
// folder, fsynced and renamed.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("tokenizer: %v", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tokenizer: writing %s: %v", path, err)
	}
	return nil
}
