// Package task is benchmark evaluation (`dllm eval --task`): task files in
// the shapes common benchmarks ship (a generic multiple-choice line,
// HellaSwag, ARC, PIQA, MMLU, and generation tasks such as GSM8K),
// lm-evaluation-harness's tokenisation of (context, choice) pairs, its
// metrics (acc, acc_norm, standard error), and the loops that score a task
// with an AR or a diffusion model.
package task

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Formats of a task file (one JSON object per line).
const (
	Choice    = "choice"    // {"context", "choices": [...], "label": i}
	HellaSwag = "hellaswag" // {"ctx" | "ctx_a"+"ctx_b", "activity_label", "endings", "label"}
	ARC       = "arc"       // {"question", "choices": {"text", "label"}, "answerKey"}
	PIQA      = "piqa"      // {"goal", "sol1", "sol2", "label"}
	MMLU      = "mmlu"      // {"question", "choices": [4], "answer": i or "A".."D"}
	Gen       = "gen"       // {"prompt", "answer"}
)

// Formats lists the accepted --task-format values.
var Formats = []string{Choice, HellaSwag, ARC, PIQA, MMLU, Gen}

// Example is one multiple-choice question as the harness builds it: the
// model scores Delimiter+Choices[i] after Context.
type Example struct {
	Context string
	Choices []string
	Label   int
}

// GenExample is one generation question.
type GenExample struct {
	Prompt, Answer string
}

// Task is a loaded task file.
type Task struct {
	Format   string
	Examples []Example    // multiple choice
	Gen      []GenExample // generation
}

// Load reads a JSONL task file; format "" detects it from the first line's
// fields.
func Load(path, format string) (*Task, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--task: %v", err)
	}
	defer f.Close()
	if format != "" && !isFormat(format) {
		return nil, fmt.Errorf("--task-format %q is not one of %s", format, strings.Join(Formats, ", "))
	}
	t := &Task{Format: format}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		raw := strings.TrimSpace(sc.Text())
		if raw == "" {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(raw), &obj); err != nil {
			return nil, fmt.Errorf("%s:%d: not a JSON object: %v", path, line, err)
		}
		if t.Format == "" {
			if t.Format = detect(obj); t.Format == "" {
				return nil, fmt.Errorf("%s:%d: cannot tell the task format from the fields %s; give --task-format (%s)",
					path, line, fieldNames(obj), strings.Join(Formats, ", "))
			}
		}
		if t.Format == Gen {
			var g struct {
				Prompt, Answer *string
			}
			if err := json.Unmarshal([]byte(raw), &g); err != nil || g.Prompt == nil || g.Answer == nil {
				return nil, fmt.Errorf("%s:%d: a generation line needs string fields \"prompt\" and \"answer\"", path, line)
			}
			t.Gen = append(t.Gen, GenExample{*g.Prompt, *g.Answer})
			continue
		}
		ex, err := parse(t.Format, []byte(raw))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %v", path, line, t.Format, err)
		}
		if len(ex.Choices) < 2 {
			return nil, fmt.Errorf("%s:%d: %d choices; a multiple-choice line needs at least 2", path, line, len(ex.Choices))
		}
		if ex.Label < 0 || ex.Label >= len(ex.Choices) {
			return nil, fmt.Errorf("%s:%d: label %d is not an index into the %d choices", path, line, ex.Label, len(ex.Choices))
		}
		t.Examples = append(t.Examples, ex)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(t.Examples)+len(t.Gen) == 0 {
		return nil, fmt.Errorf("%s: no examples", path)
	}
	return t, nil
}

func isFormat(s string) bool {
	for _, f := range Formats {
		if f == s {
			return true
		}
	}
	return false
}

func fieldNames(obj map[string]json.RawMessage) string {
	var ks []string
	for k := range obj {
		ks = append(ks, k)
	}
	return "{" + strings.Join(ks, ", ") + "}"
}

func detect(obj map[string]json.RawMessage) string {
	has := func(ks ...string) bool {
		for _, k := range ks {
			if _, ok := obj[k]; !ok {
				return false
			}
		}
		return true
	}
	switch {
	case has("context", "choices", "label"):
		return Choice
	case has("endings", "label") && (has("ctx") || has("ctx_a")):
		return HellaSwag
	case has("question", "choices", "answerKey"):
		return ARC
	case has("goal", "sol1", "sol2"):
		return PIQA
	case has("question", "choices", "answer"):
		return MMLU
	case has("prompt", "answer"):
		return Gen
	}
	return ""
}

// label reads an integer label that may be written as a number or a
// string ("2", as the Hugging Face HellaSwag files have it).
func label(raw json.RawMessage) (int, error) {
	var n int
	if err := json.Unmarshal(raw, &n); err == nil {
		return n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
			return v, nil
		}
	}
	return 0, fmt.Errorf("label %s is not an integer", raw)
}

func parse(format string, raw []byte) (Example, error) {
	switch format {
	case Choice:
		var v struct {
			Context *string
			Choices []string
			Label   json.RawMessage
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Context == nil || v.Label == nil {
			return Example{}, fmt.Errorf("needs \"context\" (string), \"choices\" (strings) and \"label\" (integer)")
		}
		l, err := label(v.Label)
		return Example{*v.Context, v.Choices, l}, err
	case HellaSwag:
		// The harness's hellaswag: activity_label + ": " + ctx_a + " " +
		// ctx_b.capitalize(), then its preprocess on query and endings.
		var v struct {
			Ctx, CtxA, CtxB, Activity string
			Endings                   []string
			Label                     json.RawMessage
		}
		var m map[string]json.RawMessage
		json.Unmarshal(raw, &m)
		get := func(k string, dst *string) { json.Unmarshal(m[k], dst) }
		get("ctx", &v.Ctx)
		get("ctx_a", &v.CtxA)
		get("ctx_b", &v.CtxB)
		get("activity_label", &v.Activity)
		if err := json.Unmarshal(m["endings"], &v.Endings); err != nil {
			return Example{}, fmt.Errorf("\"endings\" must be a list of strings")
		}
		ctx := v.Ctx
		if _, ok := m["ctx_a"]; ok {
			ctx = v.CtxA + " " + pyCapitalize(v.CtxB)
		}
		if v.Activity != "" {
			ctx = v.Activity + ": " + ctx
		}
		l, err := label(m["label"])
		ex := Example{Context: hellaswagPreprocess(ctx), Label: l}
		for _, e := range v.Endings {
			ex.Choices = append(ex.Choices, hellaswagPreprocess(e))
		}
		return ex, err
	case ARC:
		var v struct {
			Question string
			Choices  struct {
				Text  []string
				Label []string
			}
			AnswerKey string
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return Example{}, fmt.Errorf("needs \"question\", \"choices\": {\"text\": [...], \"label\": [...]} and \"answerKey\"")
		}
		ex := Example{Context: "Question: " + v.Question + "\nAnswer:", Choices: v.Choices.Text, Label: -1}
		for i, l := range v.Choices.Label {
			if l == v.AnswerKey {
				ex.Label = i
			}
		}
		if ex.Label < 0 {
			return ex, fmt.Errorf("answerKey %q is not among the choice labels %v", v.AnswerKey, v.Choices.Label)
		}
		return ex, nil
	case PIQA:
		var v struct {
			Goal, Sol1, Sol2 string
			Label            json.RawMessage
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.Label == nil {
			return Example{}, fmt.Errorf("needs \"goal\", \"sol1\", \"sol2\" and \"label\"")
		}
		l, err := label(v.Label)
		return Example{"Question: " + v.Goal + "\nAnswer:", []string{v.Sol1, v.Sol2}, l}, err
	case MMLU:
		var v struct {
			Question string
			Choices  []string
			Answer   json.RawMessage
		}
		if err := json.Unmarshal(raw, &v); err != nil || len(v.Choices) != 4 {
			return Example{}, fmt.Errorf("needs \"question\", four \"choices\" and \"answer\"")
		}
		l, err := label(v.Answer)
		if err != nil {
			var s string
			if json.Unmarshal(v.Answer, &s) == nil && len(s) == 1 && s[0] >= 'A' && s[0] <= 'D' {
				l, err = int(s[0]-'A'), nil
			}
		}
		var b strings.Builder
		b.WriteString(strings.TrimSpace(v.Question))
		for i, c := range v.Choices {
			fmt.Fprintf(&b, "\n%c. %s", 'A'+i, c)
		}
		b.WriteString("\nAnswer:")
		return Example{b.String(), []string{"A", "B", "C", "D"}, l}, err
	}
	return Example{}, fmt.Errorf("unknown format %q", format)
}

// pyCapitalize is Python's str.capitalize: first character upper case,
// the rest lower case.
func pyCapitalize(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + strings.ToLower(s[n:])
}

var bracketed = regexp.MustCompile(`\[.*?\]`)

// hellaswagPreprocess is the harness's: strip, " [title]" -> ". ", drop
// other bracketed tags, collapse double spaces.
func hellaswagPreprocess(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, " [title]", ". ")
	s = bracketed.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, "  ", " ")
}
