package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/model"
)

// sharedModels returns ../shared/models, or skips.
func sharedModels(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs("../..")
	s := filepath.Join(dir, "..", "shared", "models")
	if _, err := os.Stat(s); err != nil {
		t.Skipf("reference material %s is absent (a plain clone): skipping", s)
	}
	return s
}

func runTokenize(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := newTokenizeCmd()
	var out bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), err
}

func TestTokenizeCommand(t *testing.T) {
	dir := filepath.Join(sharedModels(t), "stories260K")
	cases := []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{dir, "--text", "Once upon a time"}, "[403, 407, 261, 378]\n"},
		{"Once upon a time", []string{dir, "--special"}, "[1, 403, 407, 261, 378]\n"},
		{"[1, 403, 407, 261, 378]", []string{dir, "--decode"}, "<s> Once upon a time\n"},
		{"", []string{dir, "--decode", "--skip-special", "--text", "[1, 403, 407, 261, 378]"}, "Once upon a time\n"},
		{"", []string{dir, "--text", ""}, "[]\n"},
	}
	for _, c := range cases {
		got, err := runTokenize(t, c.stdin, c.args...)
		if err != nil || got != c.want {
			t.Errorf("%v: got %q, %v; want %q", c.args, got, err, c.want)
		}
	}
	for _, bad := range [][]string{
		{dir, "--decode", "--text", "not json"},
		{dir, "--decode", "--text", "[1, 512]"},
		{filepath.Join(dir, "missing")},
		{filepath.Dir(dir), "--text", "x"},
	} {
		if _, err := runTokenize(t, "", bad...); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: want a one-line error, got %v", bad, err)
		}
	}
}

func TestInspectTokenizer(t *testing.T) {
	models := sharedModels(t)
	dir := filepath.Join(models, "stories260K")
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	rep, probs := inspectTokenizer(dir, cfg)
	if rep == nil || len(probs) != 0 || rep.Size != 512 || rep.BOS != 1 || rep.EOS != 2 || rep.Pad != -1 || rep.Mask == nil || rep.Mask.Kind != "new-row" {
		t.Fatalf("report %+v, problems %v", rep, probs)
	}
	var out bytes.Buffer
	printTokenizer(func(k, format string, a ...any) {
		out.WriteString(k + ": ")
		out.WriteString(strings.TrimSpace(fmt.Sprintf(format, a...)) + "\n")
	}, rep)
	want := "tokenizer: 512 tokens (bos <s>=1, eos </s>=2, pad none)\nspecials: <unk>=0, <s>=1, </s>=2\nmask token: new embedding row 512 needed for <|mask|>\n"
	if out.String() != want {
		t.Errorf("printed:\n%s\nwant:\n%s", out.String(), want)
	}
	// A config whose embedding is smaller than the tokenizer.
	small := *cfg
	small.Vocab = 300
	if _, probs := inspectTokenizer(dir, &small); len(probs) != 1 || probs[0].Kind != "tokenizer" {
		t.Errorf("small vocab: %v", probs)
	}
	// More rows than ids: a spare row.
	big := *cfg
	big.Vocab = 520
	if rep, _ := inspectTokenizer(dir, &big); rep.Mask.Kind != "spare-row" || rep.Mask.ID != 512 {
		t.Errorf("spare row: %+v", rep.Mask)
	}
	// No tokenizer.json: nothing to report.
	if rep, probs := inspectTokenizer(t.TempDir(), cfg); rep != nil || probs != nil {
		t.Errorf("empty dir: %+v %v", rep, probs)
	}
	// A broken tokenizer.json is a problem, not a crash.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "tokenizer.json"), []byte("{"), 0o644)
	if _, probs := inspectTokenizer(bad, cfg); len(probs) != 1 || probs[0].Kind != "tokenizer" {
		t.Errorf("broken tokenizer: %v", probs)
	}
}
