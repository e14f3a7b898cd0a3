package corpus

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/tokenizer"
)

// charTokenizer writes a tiny SentencePiece-style tokenizer (one token per
// byte through byte fallback, a few letters, <s> BOS and </s> EOS) so that
// these tests need nothing from ../shared. With bos=false it has no BOS.
func charTokenizer(t *testing.T, bos bool) *tokenizer.Tokenizer {
	t.Helper()
	vocab := map[string]int{"<unk>": 0, "<s>": 1, "</s>": 2}
	for b := 0; b < 256; b++ {
		vocab[fmt.Sprintf("<0x%02X>", b)] = 3 + b
	}
	for i, c := range "▁abcdefghijklmnopqrstuvwxyz" {
		vocab[string(c)] = 259 + i
	}
	model, _ := json.Marshal(map[string]any{"type": "BPE", "vocab": vocab, "merges": []string{}, "unk_token": "<unk>",
		"byte_fallback": true, "fuse_unk": true})
	post := `null`
	if bos {
		post = `{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
		"special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}`
	}
	doc := `{"added_tokens": [
	{"id": 0, "content": "<unk>", "special": true},
	{"id": 1, "content": "<s>", "special": true},
	{"id": 2, "content": "</s>", "special": true}],
	"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
	"pre_tokenizer": null, "post_processor": ` + post + `,
	"decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
	"model": ` + string(model) + `}`
	cfg := `{"eos_token": "</s>"}`
	if bos {
		cfg = `{"bos_token": "<s>", "eos_token": "</s>"}`
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tokenizer.json"), doc)
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), cfg)
	tk, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func docsOf(t *testing.T, name, content, sep string) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	writeFile(t, path, content)
	files, err := listFiles([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	docs, err := splitDocuments(files[0], []byte(content), sep, "text")
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func TestSeparators(t *testing.T) {
	text := "para one\nline two\n\n  \npara two\n\n\nthree\r\nfour\n"
	cases := map[string][]string{
		SepBlank:         {"para one\nline two", "para two", "three\nfour"},
		SepLine:          {"para one", "line two", "para two", "three", "four"},
		SepNone:          {"para one\nline two\n\n  \npara two\n\n\nthree\nfour"},
		SepSingleNewline: {"para one", "line two", "para two\n\n\nthree", "four"}, // "  \n" is a lone newline
	}
	for sep, want := range cases {
		if got := docsOf(t, "a.txt", text, sep); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %q want %q", sep, got, want)
		}
	}
	got := docsOf(t, "b.txt", "story one\n\npara\n<|endoftext|>\nstory two\n<|endoftext|>\n", SepLine)
	if want := []string{"story one\n\npara", "story two"}; !reflect.DeepEqual(got, want) {
		t.Errorf("endoftext: got %q want %q", got, want)
	}
	got = docsOf(t, "c.jsonl", `{"text": "a b", "id": 1}`+"\n\n"+`{"text": "line\nbreak"}`+"\n", "")
	if want := []string{"a b", "line\nbreak"}; !reflect.DeepEqual(got, want) {
		t.Errorf("jsonl: got %q want %q", got, want)
	}
}

func TestBadInput(t *testing.T) {
	tk := charTokenizer(t, true)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bad.txt"), "fine\nstill fine\xff\xfe no")
	writeFile(t, filepath.Join(dir, "nofield.jsonl"), `{"text": "ok"}`+"\n"+`{"body": "x"}`+"\n")
	writeFile(t, filepath.Join(dir, "notjson.jsonl"), `{"text": "ok"}`+"\n"+`{oops`+"\n")
	writeFile(t, filepath.Join(dir, "empty.txt"), "\n\n  \n")
	writeFile(t, filepath.Join(dir, "sub", "readme.bin"), "x")
	cases := []struct {
		opt  Options
		want string
	}{
		{Options{Paths: []string{filepath.Join(dir, "bad.txt")}, SeqLen: 8}, "bad.txt: not UTF-8 at byte offset 15 (line 2)"},
		{Options{Paths: []string{filepath.Join(dir, "nofield.jsonl")}, SeqLen: 8}, `nofield.jsonl:2: no "text" field`},
		{Options{Paths: []string{filepath.Join(dir, "notjson.jsonl")}, SeqLen: 8}, "notjson.jsonl:2: not a JSON object"},
		{Options{Paths: []string{filepath.Join(dir, "missing.txt")}, SeqLen: 8}, "missing.txt: no such file or directory"},
		{Options{Paths: []string{filepath.Join(dir, "empty.txt")}, SeqLen: 8}, "no documents in"},
		{Options{Paths: []string{filepath.Join(dir, "sub")}, SeqLen: 8}, "no .txt, .jsonl or .json files under"},
		{Options{Paths: []string{filepath.Join(dir, "bad.txt")}, SeqLen: 8, Separator: "para"}, "unknown document separator"},
		{Options{Paths: []string{filepath.Join(dir, "bad.txt")}, SeqLen: 8, EvalFraction: 1}, "eval fraction"},
		{Options{SeqLen: 8}, "no training data"},
	}
	for _, c := range cases {
		_, err := Load(tk, c.opt, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("want an error with %q, got %v", c.want, err)
		}
	}
	writeFile(t, filepath.Join(dir, "short.txt"), "ab")
	if _, err := Load(tk, Options{Paths: []string{filepath.Join(dir, "short.txt")}, SeqLen: 64}, nil); err == nil || !strings.Contains(err.Error(), "fewer than one row") {
		t.Errorf("short corpus: %v", err)
	}
}

// writeCorpus writes n small documents into two files of a folder.
func writeCorpus(t *testing.T, n int) string {
	dir := t.TempDir()
	var a, b strings.Builder
	for i := 0; i < n; i++ {
		w := &a
		if i >= n/2 {
			w = &b
		}
		fmt.Fprintf(w, "doc %s number %d %s\n\n", strings.Repeat("x", i%7), i, strings.Repeat("yz", i%5))
	}
	writeFile(t, filepath.Join(dir, "data", "1.txt"), a.String())
	writeFile(t, filepath.Join(dir, "data", "2", "more.txt"), b.String())
	writeFile(t, filepath.Join(dir, "data", ".hidden", "skip.txt"), "never read")
	return filepath.Join(dir, "data")
}

func TestPacking(t *testing.T) {
	tk := charTokenizer(t, true)
	data := writeCorpus(t, 60)
	c, err := Load(tk, Options{Paths: []string{data}, SeqLen: 16, EvalFraction: 0.1, BOSAtRowStart: DefaultBOSAtRowStart(tk)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := c.Stats
	if st.Files != 2 || st.Documents != 60 || st.EvalDocuments != 6 || st.TrainDocuments != 54 || !st.BOSAtRowStart || !st.DocumentBOS {
		t.Fatalf("stats %+v", st)
	}
	// Rebuild the expected stream by hand.
	var docs []string
	for i := 0; i < 60; i++ {
		docs = append(docs, strings.TrimSpace(fmt.Sprintf("doc %s number %d %s", strings.Repeat("x", i%7), i, strings.Repeat("yz", i%5))))
	}
	var stream []int32
	var docOf []int
	for i, d := range docs[:54] {
		ids := append(tk.Encode(d, true), tk.EOS())
		for _, id := range ids {
			stream = append(stream, int32(id))
			docOf = append(docOf, i)
		}
	}
	if int64(len(stream)) != st.TrainTokens || c.Train.Rows() != len(stream)/16 {
		t.Fatalf("train tokens %d rows %d, want %d / %d", st.TrainTokens, c.Train.Rows(), len(stream), len(stream)/16)
	}
	ids, dd := make([]int32, 16), make([]int32, 16)
	for r := 0; r < c.Train.Rows(); r++ {
		c.Train.Row(r, ids, dd)
		want := append([]int32(nil), stream[r*16:(r+1)*16]...)
		want[0] = 1
		if !reflect.DeepEqual(ids, want) {
			t.Fatalf("row %d: %v want %v", r, ids, want)
		}
		base := docOf[r*16]
		for j := range dd {
			if int(dd[j]) != docOf[r*16+j]-base {
				t.Fatalf("row %d docs %v", r, dd)
			}
		}
	}
	// Eval starts with the first eval document: no document in both.
	c.Eval.Row(0, ids, dd)
	first := append(tk.Encode(docs[54], true), tk.EOS())
	for j := 0; j < min(16, len(first)); j++ {
		if ids[j] != int32(first[j]) || dd[j] != 0 {
			t.Fatalf("eval row 0 = %v, want to start with %v", ids, first)
		}
	}
	// Without BOS at row start, position 0 keeps the stream's token.
	c2, err := Load(tk, Options{Paths: []string{data}, SeqLen: 16, EvalFraction: 0.1, BOSAtRowStart: false}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2.Train.Row(1, ids, nil)
	if ids[0] != stream[16] {
		t.Errorf("row 1 starts with %d, want %d", ids[0], stream[16])
	}
	// Explicit eval paths.
	evalFile := filepath.Join(t.TempDir(), "eval.jsonl")
	writeFile(t, evalFile, strings.Repeat(`{"text": "held out text here"}`+"\n", 5))
	c3, err := Load(tk, Options{Paths: []string{data}, EvalPaths: []string{evalFile}, SeqLen: 16}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c3.Stats.EvalDocuments != 5 || c3.Stats.TrainDocuments != 60 || c3.Eval.Rows() == 0 {
		t.Errorf("eval paths: %+v", c3.Stats)
	}
}

func TestNoBOSTokenizer(t *testing.T) {
	tk := charTokenizer(t, false)
	data := writeCorpus(t, 10)
	c, err := Load(tk, Options{Paths: []string{data}, SeqLen: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if DefaultBOSAtRowStart(tk) || c.Stats.BOSAtRowStart || c.Stats.DocumentBOS || c.Eval != nil || c.Eval.Rows() != 0 {
		t.Errorf("stats %+v", c.Stats)
	}
	if _, err := Load(tk, Options{Paths: []string{data}, SeqLen: 8, BOSAtRowStart: true}, nil); err == nil {
		t.Errorf("BOS at row start without a BOS token should fail")
	}
}

func TestShuffleResume(t *testing.T) {
	tk := charTokenizer(t, true)
	c, err := Load(tk, Options{Paths: []string{writeCorpus(t, 40)}, SeqLen: 32}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Train
	const batch, steps = 3, 40 // several epochs
	L := s.SeqLen()
	run := func(cur *Cursor, n int) [][]int32 {
		var out [][]int32
		for i := 0; i < n; i++ {
			ids, docs := make([]int32, batch*L), make([]int32, batch*L)
			s.NextBatch(cur, 7, ids, docs, batch)
			out = append(out, append(ids, docs...))
		}
		return out
	}
	full := run(&Cursor{}, steps)
	cur := Cursor{}
	part := run(&cur, 17)
	saved, _ := json.Marshal(cur)
	var restored Cursor
	if err := json.Unmarshal(saved, &restored); err != nil {
		t.Fatal(err)
	}
	// Another order in between must not disturb the restored run.
	s.Order(99, 5)
	part = append(part, run(&restored, steps-17)...)
	if !reflect.DeepEqual(full, part) {
		t.Fatalf("resumed run differs from uninterrupted run (cursor %s)", saved)
	}
	if restored.Epoch < 2 {
		t.Errorf("test should cross epochs, ended at %+v with %d rows", restored, s.Rows())
	}
	// Each epoch is a permutation; epochs and seeds differ.
	o0, o1, o2 := s.Order(7, 0), s.Order(7, 1), s.Order(8, 0)
	if reflect.DeepEqual(o0, o1) || reflect.DeepEqual(o0, o2) {
		t.Errorf("orders should differ across epochs and seeds")
	}
	seen := make([]bool, s.Rows())
	for _, r := range o0 {
		seen[r] = true
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("row %d missing from the permutation", i)
		}
	}
	// Fixed: the permutation must not change across versions (checkpoints
	// depend on it).
	if p := permutation(10, 42, 3); !reflect.DeepEqual(p, permutation(10, 42, 3)) || fmt.Sprint(p) != fmt.Sprint(golden) {
		t.Errorf("permutation(10, 42, 3) = %v, want %v", p, golden)
	}
}

var golden = []int32{5, 8, 4, 9, 2, 1, 0, 6, 7, 3}

func TestCache(t *testing.T) {
	tk := charTokenizer(t, true)
	data := writeCorpus(t, 30)
	cache := filepath.Join(t.TempDir(), "run")
	opt := Options{Paths: []string{data}, SeqLen: 8, EvalFraction: 0.2, CacheDir: cache}
	var calls int
	c1, err := Load(tk, opt, func(done, total int64) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if c1.Stats.CacheHit || calls == 0 || len(c1.Stats.CacheFiles) != 1 {
		t.Fatalf("first load: %+v, %d progress calls", c1.Stats, calls)
	}
	calls = 0
	c2, err := Load(tk, opt, func(done, total int64) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Stats.CacheHit || calls != 0 {
		t.Fatalf("second load should hit the cache: %+v", c2.Stats)
	}
	if !reflect.DeepEqual(c1.Train.tokens, c2.Train.tokens) || !reflect.DeepEqual(c1.Eval.starts, c2.Eval.starts) {
		t.Fatalf("cached stream differs")
	}
	// A different separator, an edited file or a damaged cache: tokenize again.
	opt2 := opt
	opt2.Separator = SepLine
	if c, _ := Load(tk, opt2, nil); c.Stats.CacheHit {
		t.Errorf("separator change should miss")
	}
	path := c1.Stats.CacheFiles[0]
	b, _ := os.ReadFile(path)
	b[len(b)/2] ^= 1
	os.WriteFile(path, b, 0o644)
	c3, err := Load(tk, opt, nil)
	if err != nil || c3.Stats.CacheHit || !reflect.DeepEqual(c1.Train.tokens, c3.Train.tokens) {
		t.Errorf("damaged cache: %v %+v", err, c3.Stats)
	}
	writeFile(t, filepath.Join(data, "1.txt"), "changed text\n")
	if c, _ := Load(tk, opt, nil); c.Stats.CacheHit {
		t.Errorf("edited input should miss")
	}
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

// sharedDir returns ../shared relative to the repository root, or skips.
func sharedDir(t testing.TB) string {
	t.Helper()
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("repository root not found")
		}
		dir = parent
	}
	s := filepath.Join(dir, "..", "shared")
	if _, err := os.Stat(s); err != nil {
		t.Skipf("reference material %s is absent (a plain clone): skipping", s)
	}
	return s
}

func TestTinyStories(t *testing.T) {
	shared := sharedDir(t)
	tk, err := tokenizer.Load(filepath.Join(shared, "models/stories260K"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load(tk, Options{
		Paths:     []string{filepath.Join(shared, "data/tinystories/TinyStories-train-head.txt")},
		EvalPaths: []string{filepath.Join(shared, "data/tinystories/tinystories_sample_cs336.txt")},
		Separator: SepSingleNewline, SeqLen: 256, CacheDir: t.TempDir(), BOSAtRowStart: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := c.Stats
	t.Logf("stats: %+v", st)
	// 1,097 stories (README); the cs336 sample has 5 stories split by <|endoftext|>.
	if st.TrainDocuments != 1097 || st.EvalDocuments != 5 {
		t.Errorf("documents %d / %d, want 1097 / 5", st.TrainDocuments, st.EvalDocuments)
	}
	// 474,596 tokens in the (trimmed) stories + BOS and EOS per story.
	if st.TrainTokens != 474596+2*1097 || st.EvalTokens != 1814 {
		t.Errorf("train tokens %d, eval tokens %d", st.TrainTokens, st.EvalTokens)
	}
	ids, docs := make([]int32, 256), make([]int32, 256)
	c.Train.Row(0, ids, docs)
	first := "One day, a little girl named Lily found a needle in her room."
	if got := tk.Decode(intSlice(ids), true); !strings.HasPrefix(got, first) || ids[0] != 1 || docs[0] != 0 {
		t.Errorf("row 0 decodes to %q (docs %v)", got, docs)
	}
	// Every document change inside a row is EOS followed by BOS.
	changes := 0
	for r := 0; r < c.Train.Rows(); r++ {
		c.Train.Row(r, ids, docs)
		for j := 1; j < len(ids); j++ {
			if docs[j] != docs[j-1] {
				changes++
				if docs[j] != docs[j-1]+1 || ids[j] != 1 || (ids[j-1] != 2 && j-1 > 0) { // position 0 is BOS
					t.Fatalf("row %d position %d: docs %d->%d, ids %d %d", r, j, docs[j-1], docs[j], ids[j-1], ids[j])
				}
			}
		}
	}
	if changes < 1000 {
		t.Errorf("only %d document changes inside rows", changes)
	}
}

func intSlice(a []int32) []int {
	out := make([]int, len(a))
	for i, v := range a {
		out[i] = int(v)
	}
	return out
}

// TestDataError: data refused for what it is is a *DataError (exit 2 on the
// command line), with the message it had.
func TestDataError(t *testing.T) {
	tok := charTokenizer(t, false)
	dir := t.TempDir()
	noField := filepath.Join(dir, "rows.jsonl")
	os.WriteFile(noField, []byte(`{"content": "hi"}`+"\n"), 0o644)
	for _, c := range []struct {
		paths []string
		want  string
	}{
		{[]string{filepath.Join(dir, "absent.txt")}, "absent.txt: no such file or directory"},
		{[]string{noField}, `rows.jsonl:1: no "text" field`},
		{nil, "no training data given"},
	} {
		_, err := Load(tok, Options{Paths: c.paths, SeqLen: 8}, nil)
		var de *DataError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v (%T), want a *DataError with %q", c.paths, err, err, c.want)
		}
	}
}
