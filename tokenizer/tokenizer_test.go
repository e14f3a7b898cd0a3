package tokenizer

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// splitStories cuts TinyStories-train-head.txt at single newlines (the regex
// (?<!\n)\n(?!\n) of its README): "\n\n" separates paragraphs.
func splitStories(text string) []string {
	var out []string
	start := 0
	for i := 0; i < len(text); i++ {
		if text[i] != '\n' {
			continue
		}
		if (i > 0 && text[i-1] == '\n') || (i+1 < len(text) && text[i+1] == '\n') {
			continue
		}
		out = append(out, text[start:i])
		start = i + 1
	}
	return append(out, text[start:])
}

func TestTinyStoriesStories260K(t *testing.T) {
	tk := loadShared(t, "models/stories260K")
	data, err := os.ReadFile(filepath.Join(sharedDir(t), "data/tinystories/TinyStories-train-head.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	whole := tk.Encode(text, false)
	if d := tk.Decode(whole, false); d != text {
		t.Errorf("whole-file round trip differs")
	}
	stories := splitStories(text)
	n, perStory, predicted, bad := 0, 0, 0, 0
	for _, s := range stories {
		if strings.TrimSpace(s) == "" {
			continue
		}
		n++
		ids := tk.Encode(s, true)
		perStory += len(ids) - 1
		if d := tk.Decode(ids, true); d != s {
			bad++
		}
		// tools/check_stories.py: BOS + stripped story, at most 512 tokens,
		// scored on every position after the first.
		ids = tk.Encode(strings.TrimSpace(s), true)
		predicted += min(len(ids), 512) - 1
	}
	if bad > 0 {
		t.Errorf("%d stories do not round-trip", bad)
	}
	t.Logf("TinyStories-train-head.txt (%d bytes): whole file %d tokens; %d stories (%d pieces), %d tokens without BOS; %d predicted tokens as check_stories.py counts them",
		len(text), len(whole), n, len(stories), perStory, predicted)
	if n != 1097 || predicted != 409330 {
		t.Errorf("%d stories, %d predicted tokens; the README says 1,097 stories and 409,330 tokens", n, predicted)
	}
}

func TestAccessors(t *testing.T) {
	cases := []struct {
		rel                 string
		size, bos, eos, pad int
		addsBOS             bool
		nSpecial            int
	}{
		{"tokenizers/qwen3", 151669, -1, 151645, 151643, false, 14},
		{"tokenizers/llama3", 128256, 128000, 128001, -1, false, 256},
		{"models/stories260K", 512, 1, 2, -1, true, 3},
		{"models/TinyStories-656K", 2048, 1, 2, 0, true, 3},
	}
	for _, c := range cases {
		tk := loadShared(t, c.rel)
		if tk.Size() != c.size || tk.BOS() != c.bos || tk.EOS() != c.eos || tk.Pad() != c.pad || tk.AddsBOS() != c.addsBOS {
			t.Errorf("%s: size %d bos %d eos %d pad %d addsBOS %v, want %d %d %d %d %v", c.rel,
				tk.Size(), tk.BOS(), tk.EOS(), tk.Pad(), tk.AddsBOS(), c.size, c.bos, c.eos, c.pad, c.addsBOS)
		}
		if n := len(tk.Specials()); n != c.nSpecial {
			t.Errorf("%s: %d specials, want %d", c.rel, n, c.nSpecial)
		}
		for _, a := range tk.Specials() {
			if id, ok := tk.ID(a.Content); !ok || id != a.ID || !tk.IsSpecial(a.ID) || tk.Token(a.ID) != a.Content {
				t.Errorf("%s: special %q/%d inconsistent", c.rel, a.Content, a.ID)
			}
		}
	}
	q := loadShared(t, "tokenizers/qwen3")
	if id, ok := q.ID("Ġhello"); !ok || q.Token(id) != "Ġhello" {
		t.Errorf("qwen3 ID(Ġhello) = %d %v", id, ok)
	}
	if q.IsSpecial(151668) { // </think> is added but not special
		t.Errorf("</think> should not be special")
	}
	if _, ok := q.ID("no such token"); ok {
		t.Errorf("found a token that does not exist")
	}
	if q.Decode([]int{9707, 151643, 10134}, true) != "HelloWorld" {
		t.Errorf("skip special: %q", q.Decode([]int{9707, 151643, 10134}, true))
	}
	if q.Decode([]int{-1, 9707, 1 << 30}, false) != "Hello" {
		t.Errorf("unknown ids should be skipped")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "cannot open") {
		t.Errorf("missing dir: %v", err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "no tokenizer.json") {
		t.Errorf("empty dir: %v", err)
	}
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("{not json")
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "JSON") {
		t.Errorf("bad json: %v", err)
	}
	write(`{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}`)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "Unigram") {
		t.Errorf("unigram: %v", err)
	}
	write(`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"}}`)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "cannot be compiled") {
		t.Errorf("bad regex: %v", err)
	}
	// Files that cannot encode are refused at load, not encoded to nothing.
	write(`{"model": {"type": "BPE", "vocab": {}, "merges": []}}`)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "model.vocab is empty") {
		t.Errorf("empty vocabulary: %v", err)
	}
	write(`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}`)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), `needs "ab", which is not in model.vocab`) {
		t.Errorf("merge to an unknown token: %v", err)
	}
	write(`{"model": {"type": "BPE", "vocab": {"a": 0, "ab": 1}, "merges": [["a", "b"]]}}`)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), `needs "b"`) {
		t.Errorf("merge of an unknown token: %v", err)
	}
}

// TestLookaheadSplit: a Split regex with look-ahead, which Go's regexp
// cannot compile, runs on regexp2 with the backtracking semantics: `\s+(?!\S)`
// leaves the last space of a run to the next word; \s is Unicode (U+3000).
func TestLookaheadSplit(t *testing.T) {
	p, err := buildPreTokenizer([]byte(`{"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.(*preSplit).re2 == nil {
		t.Fatal("not on regexp2")
	}
	got := p.split([]string{"a   b\u3000\u3000c  "}, 0)
	want := []string{"a", "  ", " b", "\u3000", "\u3000", "c", "  "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
}

// A small byte-level tokenizer exercising the generic paths: a Split regex
// Go can compile, added tokens with lstrip/rstrip, Bert-style template.
func TestGenericPaths(t *testing.T) {
	dir := t.TempDir()
	doc := `{
  "added_tokens": [
    {"id": 10, "content": "[M]", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true},
    {"id": 11, "content": "<b>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "[a-z]+|[0-9]"}, "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<b>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[M]", "type_id": 0}}],
    "special_tokens": {"<b>": {"id": "<b>", "ids": [11], "tokens": ["<b>"]}, "[M]": {"id": "[M]", "ids": [10], "tokens": ["[M]"]}}},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "1": 4, "2": 5, "c": 6, "abc": 7}, "merges": [["a", "b"], ["ab", "c"]]}
}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := tk.Encode("AB 12 [M]  abc", true)
	want := []int{11, 2, 3, 4, 5, 10, 7, 10}
	if !equalInts(got, want) {
		t.Errorf("got %v want %v", got, want)
	}
	if d := tk.Decode(got, true); d != "ab 12abc" {
		t.Errorf("decode %q", d)
	}
	if tk.BOS() != 11 || !tk.AddsBOS() || !equalInts(tk.SpecialSuffix(), []int{10}) {
		t.Errorf("bos %d adds %v suffix %v", tk.BOS(), tk.AddsBOS(), tk.SpecialSuffix())
	}
}

func TestSplitScanners(t *testing.T) {
	split := func(scan scanner, s string) []string {
		var out []string
		for i := 0; i < len(s); {
			e := scan(s, i)
			if e <= i {
				t.Fatalf("no progress at %d in %q", i, s)
			}
			out = append(out, s[i:e])
			i = e
		}
		return out
	}
	cases := []struct {
		scan scanner
		in   string
		want []string
	}{
		{scanQwen2, "Hello  world", []string{"Hello", " ", " world"}},
		{scanQwen2, "   a   ", []string{"  ", " a", "   "}},
		{scanQwen2, "x \n\n y", []string{"x", " \n\n", " y"}},
		{scanQwen2, "12345", []string{"1", "2", "3", "4", "5"}},
		{scanLlama3, "12345", []string{"123", "45"}},
		{scanLlama3, "I'M it's 'LL", []string{"I", "'M", " it", "'s", " '", "LL"}},
		{scanQwen2, "a\u017fb 'ſ", []string{"a\u017fb", " '", "\u017f"}},
		{scanQwen2, "x'\u017f", []string{"x", "'\u017f"}},
		{scanQwen2, " ((x))\r\n", []string{" ((", "x", "))\r\n"}},
		{scanGPT2, "Hello  world's 12 !!", []string{"Hello", " ", " world", "'s", " 12", " !!"}},
		{scanGPT2, "a \n", []string{"a", " \n"}},
	}
	for _, c := range cases {
		if got := split(c.scan, c.in); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%q: got %q want %q", c.in, got, c.want)
		}
	}
}

func TestLossyUTF8(t *testing.T) {
	for in, want := range map[string]string{
		"a\xe2\x80b":     "a\uFFFDb",
		"\xff\xfe":       "\uFFFD\uFFFD",
		"\xf0\x9f\x98":   "\uFFFD",
		"\xed\xa0\x80":   "\uFFFD\uFFFD\uFFFD",
		"ok \xc3\xa9 ok": "ok é ok",
	} {
		if got := lossyUTF8([]byte(in)); got != want {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
}

func TestMaskPlan(t *testing.T) {
	s := loadShared(t, "models/stories260K")
	p, err := s.PlanMask(512, "")
	if err != nil || p != (MaskPlan{MaskNewRow, 512, "<|mask|>"}) {
		t.Errorf("stories260K: %+v %v", p, err)
	}
	p, err = s.PlanMask(520, "")
	if err != nil || p != (MaskPlan{MaskSpareRow, 512, "<|mask|>"}) {
		t.Errorf("stories260K with 520 rows: %+v %v", p, err)
	}
	if _, err := s.PlanMask(500, ""); err == nil {
		t.Errorf("fewer rows than ids should fail")
	}
	p, err = s.PlanMask(512, "<unk>")
	if err != nil || p != (MaskPlan{MaskExisting, 0, "<unk>"}) {
		t.Errorf("override by name: %+v %v", p, err)
	}
	p, err = s.PlanMask(512, "2")
	if err != nil || p != (MaskPlan{MaskExisting, 2, "</s>"}) {
		t.Errorf("override by id: %+v %v", p, err)
	}
	p, err = s.PlanMask(512, "[DIFF_MASK]")
	if err != nil || p != (MaskPlan{MaskNewRow, 512, "[DIFF_MASK]"}) {
		t.Errorf("override by new name: %+v %v", p, err)
	}
	if _, err := s.PlanMask(512, "600"); err == nil {
		t.Errorf("id beyond the embedding should fail")
	}
	if _, err := s.PlanMask(512, "two words"); err == nil {
		t.Errorf("a name with a space should fail")
	}

	q := loadShared(t, "tokenizers/qwen3")
	p, err = q.PlanMask(151936, "")
	if err != nil || p != (MaskPlan{MaskSpareRow, 151669, "<|mask|>"}) {
		t.Errorf("qwen3: %+v %v", p, err)
	}

	// A tokenizer with its own mask token (Dream/LLaDA style).
	dir := t.TempDir()
	copyFile(t, filepath.Join(sharedDir(t), "models/stories260K/tokenizer.json"), filepath.Join(dir, "tokenizer.json"))
	copyFile(t, filepath.Join(sharedDir(t), "models/stories260K/tokenizer_config.json"), filepath.Join(dir, "tokenizer_config.json"))
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, _ = tk.PlanMask(513, "")
	if err := tk.ApplyMask(p); err != nil {
		t.Fatal(err)
	}
	if err := tk.Save(dir); err != nil {
		t.Fatal(err)
	}
	tk2, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := tk2.PlanMask(513, "")
	if err != nil || p2 != (MaskPlan{MaskExisting, 512, "<|mask|>"}) {
		t.Errorf("reloaded: %+v %v", p2, err)
	}
	if tk2.MaskID() != 512 || tk2.Size() != 513 || !tk2.IsSpecial(512) {
		t.Errorf("mask id %d size %d", tk2.MaskID(), tk2.Size())
	}
	// The mask token is matched as an added token and skipped as special.
	ids := tk2.Encode("a<|mask|>b", false)
	// (the Prepend normalizer runs on each section: "▁a", "▁b")
	if !containsInt(ids, 512) || tk2.Decode(ids, true) != "a b" || tk2.Decode(ids, false) != "a<|mask|> b" {
		t.Errorf("encode with mask: %v -> %q", ids, tk2.Decode(ids, true))
	}
	// mask_token named in tokenizer_config.json.
	cfg, _ := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if !bytes.Contains(cfg, []byte(`"mask_token": "<|mask|>"`)) {
		t.Errorf("tokenizer_config.json lacks mask_token:\n%s", cfg)
	}
}

func containsInt(a []int, v int) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// topLevel decodes a JSON object into its members.
func topLevel(t *testing.T, path string) map[string]json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func TestSaveRoundTrip(t *testing.T) {
	for _, rel := range []string{"tokenizers/qwen3", "models/TinyStories-656K", "models/stories260K"} {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			src := filepath.Join(sharedDir(t), rel)
			tk, err := Load(src)
			if err != nil {
				t.Fatal(err)
			}
			before := tk.Size()
			out := t.TempDir()
			// Unchanged: byte-identical copies.
			if err := tk.Save(out); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
				a, _ := os.ReadFile(filepath.Join(src, f))
				b, _ := os.ReadFile(filepath.Join(out, f))
				if !bytes.Equal(a, b) {
					t.Errorf("%s changed without any change", f)
				}
			}
			plan, err := tk.PlanMask(before, "")
			if err != nil {
				t.Fatal(err)
			}
			if err := tk.ApplyMask(plan); err != nil {
				t.Fatal(err)
			}
			if err := tk.Save(out); err != nil {
				t.Fatal(err)
			}
			tk2, err := Load(out)
			if err != nil {
				t.Fatal(err)
			}
			if id, ok := tk2.ID("<|mask|>"); !ok || id != before || !tk2.IsSpecial(id) || tk2.Size() != before+1 {
				t.Fatalf("mask token after reload: id %d ok %v size %d", id, ok, tk2.Size())
			}
			// Every other member is byte-identical.
			a := topLevel(t, filepath.Join(src, "tokenizer.json"))
			b := topLevel(t, filepath.Join(out, "tokenizer.json"))
			for k, v := range a {
				if k == "added_tokens" {
					continue
				}
				if !bytes.Equal(v, b[k]) {
					t.Errorf("tokenizer.json %q changed", k)
				}
			}
			var addA, addB []AddedToken
			json.Unmarshal(a["added_tokens"], &addA)
			json.Unmarshal(b["added_tokens"], &addB)
			if len(addB) != len(addA)+1 || addB[len(addB)-1] != (AddedToken{ID: before, Content: "<|mask|>", Special: true}) {
				t.Errorf("added_tokens: %d -> %d, last %+v", len(addA), len(addB), addB[len(addB)-1])
			}
			ca := topLevel(t, filepath.Join(src, "tokenizer_config.json"))
			cb := topLevel(t, filepath.Join(out, "tokenizer_config.json"))
			for k, v := range ca {
				if k == "added_tokens_decoder" || k == "mask_token" {
					continue
				}
				if !bytes.Equal(v, cb[k]) {
					t.Errorf("tokenizer_config.json %q changed", k)
				}
			}
			if string(cb["mask_token"]) != `"<|mask|>"` {
				t.Errorf("mask_token = %s", cb["mask_token"])
			}
			if _, ok := ca["added_tokens_decoder"]; ok {
				var dec map[string]addedDecoderEntry
				json.Unmarshal(cb["added_tokens_decoder"], &dec)
				if e, ok := dec[strconvItoa(before)]; !ok || e.Content != "<|mask|>" || !e.Special {
					t.Errorf("added_tokens_decoder lacks the mask: %+v", e)
				}
			}
			// Encoding is unchanged for text without the new token.
			text := "Once upon a time, 12 cats<|endoftext|> ran."
			if !equalInts(tk.Encode(text, true), tk2.Encode(text, true)) {
				t.Errorf("encoding changed after save/load")
			}
			// Layout: the new entry is indented like the first one.
			raw := b["added_tokens"]
			first := bytes.Index(raw, []byte(`"id": `))
			last := bytes.LastIndex(raw, []byte(`"id": `))
			ws := func(i int) string { return string(raw[bytes.LastIndexByte(raw[:i], '{')+1 : i]) }
			if ws(first) != ws(last) {
				t.Errorf("new added token laid out as %q, the first one as %q", ws(last), ws(first))
			}
			if testing.Verbose() {
				t.Logf("added_tokens ends with:\n%s", raw[max(0, len(raw)-260):])
			}
		})
	}
}

func strconvItoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// Cutting before "▁" (splitSpace) gives the same ids as one BPE over the
// whole text.
func TestSplitSpaceExact(t *testing.T) {
	tk := loadShared(t, "models/stories260K")
	if !tk.splitSpace {
		t.Fatal("stories260K should allow cutting before ▁")
	}
	if loadShared(t, "models/TinyStories-656K").splitSpace {
		t.Fatal("TinyStories-656K has tokens like \"ce▁\": no cutting")
	}
	data, err := os.ReadFile(filepath.Join(sharedDir(t), "data/tinystories/TinyStories-train-head.txt"))
	if err != nil {
		t.Fatal(err)
	}
	stories := splitStories(string(data))[:200]
	fast := tk.EncodeBatch(stories, true)
	tk.splitSpace = false
	defer func() { tk.splitSpace = true }()
	for i, s := range stories {
		if slow := tk.Encode(s, true); !equalInts(slow, fast[i]) {
			t.Fatalf("story %d differs", i)
		}
	}
}
