package main

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const tinyChoiceTask = `{"context": "Once upon a time there was a little", "choices": ["cat.", "dog.", "sun."], "label": 0}
{"context": "The fox liked to play in the", "choices": ["sun", "little"], "label": 0}
{"context": "Once upon a", "choices": ["time", "play", "friend number"], "label": 0}
`

type taskJSON struct {
	Accuracy     *float64 `json:"accuracy"`
	AccuracyNorm *float64 `json:"accuracy_norm"`
	N            int      `json:"n"`
	Tokens       int64    `json:"tokens"`
	Examples     []struct {
		Scores []float64 `json:"scores"`
		Label  int       `json:"label"`
	} `json:"examples"`
	Model, Mode string
}

// TestEvalTaskCompare runs a small multiple-choice task on a converted
// tiny model beside its AR source: one JSON with both runs, whose AR scores
// equal a plain --mode ar run of the source, and diffusion scores that are
// finite bounds (below zero) and fixed by the seed.
func TestEvalTaskCompare(t *testing.T) {
	out, _ := convertTiny(t)
	final, src := filepath.Join(out, "final"), filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	tk := writeFile(t, "task.jsonl", tinyChoiceTask)
	stdout, stderr, err := dllm(t, "eval", final, "--task", tk, "--compare", src, "--mc", "4", "--threads", "2", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var both struct{ Runs []taskJSON }
	if err := json.Unmarshal([]byte(stdout), &both); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if len(both.Runs) != 2 || both.Runs[0].Mode != "ar" || both.Runs[1].Mode != "diffusion" {
		t.Fatalf("runs %+v", both.Runs)
	}
	stdout, _, err = dllm(t, "eval", src, "--task", tk, "--threads", "2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ar taskJSON
	if err := json.Unmarshal([]byte(stdout), &ar); err != nil || ar.Accuracy == nil || ar.AccuracyNorm == nil || ar.N != 3 {
		t.Fatalf("ar json %v: %s", err, stdout)
	}
	for i, ex := range ar.Examples {
		for j, s := range ex.Scores {
			if s >= 0 || s != both.Runs[0].Examples[i].Scores[j] {
				t.Errorf("example %d choice %d: AR %v, in --compare %v", i, j, s, both.Runs[0].Examples[i].Scores[j])
			}
			d := both.Runs[1].Examples[i].Scores[j]
			if !(d < 0) || math.IsInf(d, 0) {
				t.Errorf("example %d choice %d: diffusion score %v", i, j, d)
			}
		}
	}
	again, _, err := dllm(t, "eval", final, "--task", tk, "--mc", "4", "--threads", "2", "--json", "--limit", "2")
	if err != nil {
		t.Fatal(err)
	}
	var d2 taskJSON
	json.Unmarshal([]byte(again), &d2)
	if d2.N != 2 || d2.Examples[1].Scores[0] != both.Runs[1].Examples[1].Scores[0] {
		t.Errorf("--limit 2 rerun: n %d, scores %v vs %v", d2.N, d2.Examples, both.Runs[1].Examples[:2])
	}
	// The text table names both models.
	table, _, err := dllm(t, "eval", final, "--task", tk, "--compare", src, "--mc", "2", "--threads", "2")
	if err != nil || !strings.Contains(table, "acc_norm") || !strings.Contains(table, src) || !strings.Contains(table, "diffusion") {
		t.Errorf("table: %v\n%s", err, table)
	}
}

// TestEvalGenerationTask decodes a GSM8K-shaped task with the AR source
// and the diffusion conversion; the result is an exact-match fraction.
func TestEvalGenerationTask(t *testing.T) {
	out, _ := convertTiny(t)
	tk := writeFile(t, "gen.jsonl", `{"prompt": "Once upon a time", "answer": "so\n#### 3"}
{"prompt": "The cat", "answer": "#### 4"}
`)
	for _, c := range [][]string{
		{filepath.Join(moduleRoot(t), "testdata/tiny/llama"), "--mode", "ar"},
		{filepath.Join(out, "final"), "--steps", "4"},
		{filepath.Join(moduleRoot(t), "testdata/tiny/llama"), "--mode", "ar", "--chat-template", filepath.Join(moduleRoot(t), "testdata/chat/chatml.jinja")},
	} {
		args := append([]string{"eval", c[0], "--task", tk, "--gen-len", "6", "--threads", "2", "--json"}, c[1:]...)
		stdout, stderr, err := dllm(t, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		var g struct {
			ExactMatch *float64 `json:"exact_match"`
			N          int
			Examples   []struct{ Extracted, Answer string }
		}
		if err := json.Unmarshal([]byte(stdout), &g); err != nil || g.ExactMatch == nil || g.N != 2 || len(g.Examples) != 2 {
			t.Fatalf("%v: %s", err, stdout)
		}
		if g.Examples[1].Answer != "#### 4" {
			t.Errorf("answer %q", g.Examples[1].Answer)
		}
	}
}

func TestEvalTaskErrors(t *testing.T) {
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	tk := writeFile(t, "task.jsonl", tinyChoiceTask)
	none := filepath.Join(t.TempDir(), "none")
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"eval", src, "--task", filepath.Join(t.TempDir(), "none.jsonl")}, "--task", 2},
		{[]string{"eval", src, "--task", tk, "--data", tk}, "not both", 2},
		{[]string{"eval", src, "--task", tk, "--mode", "diffusion"}, "--mode ar", 2},
		{[]string{"eval", src, "--task", writeFile(t, "bad.jsonl", `{"x": 1}`)}, "--task-format", 2},
		{[]string{"eval", src, "--task", writeFile(t, "g.jsonl", `{"prompt": "a", "answer": "b"}`), "--extract", "("}, "--extract", 2},
		{[]string{"eval", src, "--task", writeFile(t, "g2.jsonl", `{"prompt": "a", "answer": "b"}`), "--chat"}, src + " has no chat_template in tokenizer_config.json: pass --chat-template", 2},
		{[]string{"eval", none, "--task", tk}, none + ": no such folder", 2},
		{[]string{"eval", src, "--task", writeFile(t, "g3.jsonl", `{"prompt": "a", "answer": "b"}`), "--gen-len", "300"}, "beyond the model's context of 256", 2},
		{[]string{"eval", src, "--task", writeFile(t, "g4.jsonl", `{"prompt": "a", "answer": "b"}`), "--temperature", "NaN"}, src + ": --temperature must be a number", 2},
	} {
		_, _, err := dllm(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") || exitCode(err) != c.code {
			t.Errorf("%v: error %v (exit %d), want one line mentioning %q, exit %d", c.args[3:], err, exitCode(err), c.want, c.code)
		}
		// The model's folder once: runTask's prefix where the message does not name it.
		if err != nil && strings.Count(err.Error(), c.args[1]) > 1 {
			t.Errorf("%v: %v names %s more than once", c.args[3:], err, c.args[1])
		}
	}
}

// TestEvalARRows: --mode ar with --eval-fraction scores the packed
// held-out rows, positions 1..L-1, as many tokens as the bound scores.
func TestEvalARRows(t *testing.T) {
	data := smallText(t)
	src := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	// --mode diffusion on an AR model is bad input.
	if _, _, err := dllm(t, "eval", src, "--data", data, "--mode", "diffusion"); err == nil ||
		!strings.HasSuffix(err.Error(), "not a diffusion checkpoint (convert it with 'dllm convert', or use --ar); --mode ar measures an AR model") || exitCode(err) != 2 {
		t.Errorf("eval --mode diffusion of an AR model: %v (exit %d), want exit 2", err, exitCode(err))
	}
	stdout, stderr, err := dllm(t, "eval", src, "--data", data, "--mode", "ar", "--eval-fraction", "0.2", "--rows", "3",
		"--seq-len", "32", "--batch-size", "2", "--threads", "2", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var r struct {
		CrossEntropy float64 `json:"cross_entropy"`
		Tokens       int64
		Rows         int
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	if r.Rows != 3 || r.Tokens != 3*31 || !(r.CrossEntropy > 0) || math.IsInf(r.CrossEntropy, 0) {
		t.Fatalf("%+v", r)
	}
}

// TestWithDir: runTask names the model's folder once, as a whole path, and
// keeps an exitError's code.
func TestWithDir(t *testing.T) {
	for _, c := range [][3]string{
		{"dd", "dd has no chat_template", "dd has no chat_template"},
		{"d", "dd has no chat_template", "d: dd has no chat_template"},
		{"dd/", "open dd/config.json: no such file", "open dd/config.json: no such file"},
		{".", "--gen-len must be positive.", ".: --gen-len must be positive."},
		{"m", `--adapter "x/m2": bad`, `m: --adapter "x/m2": bad`},
		{"m", `the weights of m hold NaN`, `the weights of m hold NaN`},
	} {
		if got := withDir(c[0], errors.New(c[1])).Error(); got != c[2] {
			t.Errorf("withDir(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
	if err := withDir("m", &exitError{2, errors.New("bad")}); exitCode(err) != 2 {
		t.Errorf("%v: exit %d, want 2", err, exitCode(err))
	}
}
