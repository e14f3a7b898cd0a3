package task

import (
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/corpus"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

func writeTask(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "task.jsonl")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFormats(t *testing.T) {
	cases := []struct {
		line, format string
		want         Example
	}{
		{`{"context": "The sky is", "choices": ["blue", "green"], "label": 0}`, Choice,
			Example{"The sky is", []string{"blue", "green"}, 0}},
		{`{"activity_label": "Baking cookies", "ctx_a": "A woman puts dough on a tray.", "ctx_b": "she", "endings": ["bakes it [title] Done.", "eats  it"], "label": "1"}`, HellaSwag,
			Example{"Baking cookies: A woman puts dough on a tray. She", []string{"bakes it. Done.", "eats it"}, 1}},
		{`{"ctx": "A man sits.", "endings": ["a", "b"], "label": 0}`, HellaSwag,
			Example{"A man sits.", []string{"a", "b"}, 0}},
		{`{"question": "What melts ice?", "choices": {"text": ["heat", "cold", "dark"], "label": ["A", "B", "C"]}, "answerKey": "A"}`, ARC,
			Example{"Question: What melts ice?\nAnswer:", []string{"heat", "cold", "dark"}, 0}},
		{`{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}`, PIQA,
			Example{"Question: Open a jar\nAnswer:", []string{"twist the lid", "eat the lid"}, 0}},
		{`{"question": " 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1}`, MMLU,
			Example{"2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", []string{"A", "B", "C", "D"}, 1}},
		{`{"question": "2+3?", "choices": ["3", "4", "5", "6"], "answer": "C"}`, MMLU,
			Example{"2+3?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", []string{"A", "B", "C", "D"}, 2}},
	}
	for _, c := range cases {
		tk, err := Load(writeTask(t, c.line), "")
		if err != nil {
			t.Fatalf("%s: %v", c.line, err)
		}
		if tk.Format != c.format || len(tk.Examples) != 1 {
			t.Fatalf("%s: format %s, %d examples", c.line, tk.Format, len(tk.Examples))
		}
		got := tk.Examples[0]
		if got.Context != c.want.Context || strings.Join(got.Choices, "|") != strings.Join(c.want.Choices, "|") || got.Label != c.want.Label {
			t.Errorf("%s:\n got  %q %q %d\n want %q %q %d", c.format, got.Context, got.Choices, got.Label, c.want.Context, c.want.Choices, c.want.Label)
		}
	}
	g, err := Load(writeTask(t, `{"prompt": "Q: 1+1?", "answer": "so 2\n#### 2"}`), "")
	if err != nil || g.Format != Gen || len(g.Gen) != 1 || g.Gen[0].Answer != "so 2\n#### 2" {
		t.Fatalf("gen: %+v %v", g, err)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, c := range []struct{ line, format, want string }{
		{`{"foo": 1}`, "", "cannot tell the task format"},
		{`{"context": "a", "choices": ["x", "y"], "label": 2}`, "", "label 2 is not an index"},
		{`{"context": "a", "choices": ["x"], "label": 0}`, "", "at least 2"},
		{`not json`, "", "not a JSON object"},
		{`{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}`, "", "answerKey"},
		{`{"context": "a", "choices": ["x", "y"], "label": 0}`, "nope", "--task-format"},
		{`{"prompt": "p"}`, Gen, "\"answer\""},
	} {
		_, err := Load(writeTask(t, c.line), c.format)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to mention %q", c.line, err, c.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.jsonl"), ""); err == nil || !strings.Contains(err.Error(), "--task") {
		t.Errorf("missing file: %v", err)
	}
}

// runeEncoder encodes one token per rune (ids = code points), BOS 1 first.
type runeEncoder struct{}

func (runeEncoder) Encode(s string, special bool) []int {
	var out []int
	if special {
		out = append(out, 1)
	}
	for _, r := range s {
		out = append(out, int(r))
	}
	return out
}
func (runeEncoder) BOS() int { return 1 }
func (runeEncoder) EOS() int { return 2 }

func TestEncodePairMovesTrailingSpace(t *testing.T) {
	ctx, cont, err := EncodePair(runeEncoder{}, "Answer: \n", "yes")
	if err != nil {
		t.Fatal(err)
	}
	if string(runes(ctx[1:])) != "Answer:" || string(runes(cont)) != " \nyes" || ctx[0] != 1 {
		t.Errorf("ctx %q cont %q", runes(ctx), runes(cont))
	}
	ctx, cont, _ = EncodePair(runeEncoder{}, "", "hi")
	if len(ctx) != 1 || ctx[0] != 1 || string(runes(cont)) != "hi" {
		t.Errorf("empty context: %v %v", ctx, cont)
	}
}

func runes(x []int32) []rune {
	out := make([]rune, len(x))
	for i, v := range x {
		out[i] = rune(v)
	}
	return out
}

// With SentencePiece (stories260K's llama2.c tokenizer) the choice's
// tokens are those of the whole after the context's: " blue" after "is"
// becomes the word piece "▁blue", not a separate space.
func TestEncodePairSentencePiece(t *testing.T) {
	dir := "../../shared/models/stories260K"
	if _, err := os.Stat(dir); err != nil {
		t.Skip("../shared not present: ", err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cont, err := EncodePair(tok, "The sky was", " blue")
	if err != nil {
		t.Fatal(err)
	}
	whole := tok.Encode("The sky was blue", true)
	if len(ctx)+len(cont) != len(whole) || int(ctx[0]) != tok.BOS() {
		t.Fatalf("ctx %v + cont %v != whole %v", ctx, cont, whole)
	}
	for i, v := range append(append([]int32(nil), ctx...), cont...) {
		if int(v) != whole[i] {
			t.Fatalf("token %d: %d, whole has %d", i, v, whole[i])
		}
	}
	if d := tok.Decode(to(cont), true); strings.TrimSpace(d) != "blue" {
		t.Errorf("continuation decodes to %q", d)
	}
}

func to(x []int32) []int {
	out := make([]int, len(x))
	for i, v := range x {
		out[i] = int(v)
	}
	return out
}

func TestMeanStderr(t *testing.T) {
	m, se := MeanStderr([]float64{1, 0, 1, 1})
	if m != 0.75 || math.Abs(se-0.25) > 1e-15 {
		t.Errorf("mean %v stderr %v, want 0.75 0.25", m, se)
	}
}

// fixedScorer returns scores from a table keyed by the decoded
// continuation.
type fixedScorer map[string]float64

func (f fixedScorer) LogLikelihood(segs []model.Segment, _ []uint64) ([]float64, error) {
	var out []float64
	for _, s := range segs {
		out = append(out, f[string(runes(s.Tokens[s.Context:]))])
	}
	return out, nil
}

// acc takes the argmax of the scores, acc_norm of score / characters of
// the choice (without the delimiter).
func TestRunMetrics(t *testing.T) {
	tk := &Task{Format: Choice, Examples: []Example{
		{"a", []string{"xx", "yyyy"}, 1}, // -2 vs -3: acc picks 0, norm -1 vs -0.75 picks 1
		{"b", []string{"p", "q"}, 0},     // -1 vs -2: both pick 0
		{"c", []string{"r", "s"}, 1},     // -1 vs -2: both pick 0 (wrong)
	}}
	sc := fixedScorer{" xx": -2, " yyyy": -3, " p": -1, " q": -2, " r": -1, " s": -2}
	res, err := Run(tk, runeEncoder{}, sc, Options{Delimiter: " ", Chunk: 2})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(res.Accuracy-1.0/3) > 1e-12 || math.Abs(res.AccuracyNorm-2.0/3) > 1e-12 || res.N != 3 {
		t.Errorf("acc %v acc_norm %v n %d", res.Accuracy, res.AccuracyNorm, res.N)
	}
	if len(res.Examples) != 3 || res.Examples[0].Scores[1] != -3 || res.Examples[2].Label != 1 {
		t.Errorf("examples %+v", res.Examples)
	}
	res, _ = Run(tk, runeEncoder{}, sc, Options{Delimiter: " ", Limit: 1})
	if res.N != 1 {
		t.Errorf("limit 1 gave n %d", res.N)
	}
}

func TestExtractAndNormalize(t *testing.T) {
	re := regexp.MustCompile(DefaultExtract)
	for _, c := range []struct {
		gen, answer string
		ok          bool
	}{
		{"She has 3 + 4 = 7 apples.\n#### 7", "3+4=7\n#### 7", true},
		{"#### 1,000", "#### 1000", true},
		{"#### 12.", "#### 12", true},
		{"The answer is 7", "#### 7", false}, // no "####": [invalid]
		{"#### 8", "#### 7", false},
	} {
		got := Normalize(Extract(re, c.gen)) == Normalize(c.answer)
		if got != c.ok {
			t.Errorf("%q vs %q: match %v, want %v (extracted %q)", c.gen, c.answer, got, c.ok, Extract(re, c.gen))
		}
	}
}

// The committed story-continuation task: 110 four-way items whose
// contexts come from the documents a convert run with --eval-fraction 0.05
// holds out of TinyStories-train-head.txt, and from no training document.
func TestStoryTaskIsHeldOut(t *testing.T) {
	tk, err := Load("../testdata/storytask/tinystories-heldout.jsonl", "")
	if err != nil {
		t.Fatal(err)
	}
	if tk.Format != Choice || len(tk.Examples) != 110 {
		t.Fatalf("format %s, %d examples", tk.Format, len(tk.Examples))
	}
	data := "../../shared/data/tinystories/TinyStories-train-head.txt"
	if _, err := os.Stat(data); err != nil {
		t.Skip("../shared not present: ", err)
	}
	docs, err := corpus.ReadDocuments([]string{data}, corpus.SepSingleNewline, "text")
	if err != nil {
		t.Fatal(err)
	}
	k := int(math.Round(0.05 * float64(len(docs))))
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	var held, train []string
	for i, d := range docs {
		if i >= len(docs)-k {
			held = append(held, norm(d))
		} else {
			train = append(train, norm(d))
		}
	}
	in := func(ds []string, s string) bool {
		for _, d := range ds {
			if strings.Contains(d, s) {
				return true
			}
		}
		return false
	}
	for i, ex := range tk.Examples {
		if len(ex.Choices) != 4 || !in(held, ex.Context+" "+ex.Choices[ex.Label]) {
			t.Fatalf("item %d: context and true continuation are not from one held-out story", i)
		}
		// TinyStories repeats stock openings ("Once upon a time, there
		// was a little girl named Lily."), so only the whole passage is
		// required to be unseen.
		if in(train, ex.Context+" "+ex.Choices[ex.Label]) {
			t.Errorf("item %d: context and continuation found in a training document", i)
		}
	}
}
