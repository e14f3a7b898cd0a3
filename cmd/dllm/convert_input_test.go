package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestConvertBadInput: each refusal of convert's inputs (an option out of
// range or unknown, inconsistent flags, missing data, an unusable --config,
// --out or resumed run) exits 2 with its one line, prints nothing on stdout
// and leaves --out as it was (no folder where there was none).
func TestConvertBadInput(t *testing.T) {
	tiny := filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	data := smallText(t)
	tmp := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Runs --resume finds: a checkpoint whose state is no JSON, one of a
	// run with another weighting.
	damaged := filepath.Dir(filepath.Dir(file("damaged/checkpoint-1/trainer_state.json", "{step")))
	saved := filepath.Dir(filepath.Dir(file("saved/checkpoint-1/trainer_state.json",
		`{"step": 1, "options": {"source": "`+tiny+`", "data": ["`+data+`"], "weighting": "elbo", "steps": 2, "seq-len": 16}}`)))
	foreign := filepath.Dir(file("foreign/notes.txt", "mine"))
	cfgMissing := filepath.Join(tmp, "absent.yaml")
	cfgUnknown := file("unknown.yaml", "stpes: 3\n")
	cfgBad := file("bad.yaml", "steps: [1\n")
	noField := file("nofield.jsonl", `{"content": "a story"}`+"\n")
	notUTF8 := file("latin1.txt", "caf\xe9 au lait\n")
	noText := filepath.Dir(file("notext/.hidden.txt", "hidden text"))
	empty := file("empty.txt", "\n\n")
	emptyOut := filepath.Join(tmp, "emptyout")
	if err := os.Mkdir(emptyOut, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string // after SRC; --out is added unless given
		out  string   // an --out that exists before (left as it was)
		want string
	}{
		{"nodata", nil, "", "no training data: pass --data"},
		{"missingdata", []string{"--data", filepath.Join(tmp, "nope.txt")}, "", "training data " + filepath.Join(tmp, "nope.txt") + ": no such file or directory"},
		{"missingeval", []string{"--data", data, "--eval-data", filepath.Join(tmp, "nope")}, "", "training data " + filepath.Join(tmp, "nope")},
		{"weighting", []string{"--data", data, "--weighting", "foo"}, "", "weighting"},
		{"steps", []string{"--data", data, "--steps", "0"}, "", "--steps must be positive, got 0"},
		{"seqlen", []string{"--data", data, "--seq-len", "1"}, "", "--seq-len must be at least 2"},
		{"lr", []string{"--data", data, "--lr", "-1"}, "", "--lr must be positive"},
		{"beta", []string{"--data", data, "--beta2", "1"}, "", "--beta1 and --beta2 must be in [0, 1)"},
		{"evalfraction", []string{"--data", data, "--eval-fraction", "1"}, "", "--eval-fraction must be in [0, 1)"},
		{"keep", []string{"--data", data, "--keep", "0"}, "", "--keep must be at least 1"},
		{"init", []string{"--data", data, "--init", "zeros"}, "", "--init must be pretrained or random"},
		{"schedule", []string{"--data", data, "--lr-schedule", "step"}, "", "--lr-schedule must be cosine, wsd or constant"},
		{"device", []string{"--data", data, "--device", "tpu"}, "", `unknown device "tpu"`},
		{"bf16copies", []string{"--data", data, "--bf16-copies", "maybe"}, "", "--bf16-copies must be auto, on or off"},
		{"tper", []string{"--data", data, "--t-per", "token"}, "", "--t-per must be row or block"},
		{"trange", []string{"--data", data, "--t-range", "0.8,0.3"}, "", "--t-range wants LO,HI"},
		{"dtype", []string{"--data", data, "--dtype", "f8"}, "", "--dtype"},
		{"sftpad", []string{"--data", data, "--sft", "--sft-pad", "zero"}, "", "--sft-pad must be eos or none"},
		{"chattemplate", []string{"--data", data, "--chat-template", data}, "", "--chat-template is for SFT data: add --sft"},
		{"blockschedule", []string{"--data", data, "--block-schedule", "huge"}, "", "block"},
		{"export", []string{"--data", data, "--export", "gguf"}, "", "--export must be merged, adapter or both"},
		{"adapternolora", []string{"--data", data, "--export", "adapter"}, "", "--export adapter needs LoRA"},
		{"lorarank", []string{"--data", data, "--lora-rank", "-1"}, "", "--lora-rank must be >= 0"},
		{"lorarandom", []string{"--data", data, "--lora-rank", "2", "--init", "random"}, "", "drop one of them"},
		{"loratarget", []string{"--data", data, "--lora-rank", "2", "--lora-targets", "nope_proj"}, "", "nope_proj"},
		{"routeraux", []string{"--data", data, "--router-aux-coef", "-2"}, "", "--router-aux-coef must be >= 0"},
		{"nofield", []string{"--data", noField}, "", `no "text" field`},
		{"notutf8", []string{"--data", notUTF8}, "", "not UTF-8"},
		{"notext", []string{"--data", noText}, "", "no .txt, .jsonl or .json files under"},
		{"emptydata", []string{"--data", empty}, "", "no documents in"},
		{"shortdata", []string{"--data", data, "--seq-len", "4096", "--batch-size", "1", "--eval-fraction", "0"}, "", "fewer than one row of 4096"},
		{"sfttext", []string{"--data", data, "--sft"}, "", "SFT data is JSONL"},
		{"sftrow", []string{"--data", noField, "--sft"}, "", `needs "messages" or both "prompt" and "completion"`},
		{"chattemplatefile", []string{"--data", noField, "--sft", "--chat-template", filepath.Join(tmp, "nope.jinja")}, "", "nope.jinja"},
		{"emptyout", []string{"--data", empty}, emptyOut, "no documents in"},
		{"datainsideout", []string{"--data", filepath.Join(tmp, "in/x.txt"), "--out", filepath.Join(tmp, "in")}, "", "is inside the output folder"},
		{"foreignout", []string{"--data", data}, foreign, "is not empty and holds no dllm run"},
		{"configmissing", []string{"--data", data, "--config", cfgMissing}, "", "--config " + cfgMissing + ": no such file or directory"},
		{"configunknown", []string{"--data", data, "--config", cfgUnknown}, "", `unknown setting "stpes"`},
		{"configyaml", []string{"--data", data, "--config", cfgBad}, "", "not valid YAML or JSON"},
		{"resumenone", []string{"--resume"}, "", "--resume: no checkpoint-STEP folder in"},
		{"resumedamaged", []string{"--resume"}, damaged, "trainer_state.json is not valid"},
		{"resumechange", []string{"--resume", "--weighting", "cart"}, saved, "--weighting cannot change when resuming"},
	}
	for _, c := range cases {
		out := c.out
		if out == "" {
			out = filepath.Join(tmp, "out-"+c.name)
		}
		args := append([]string{"convert", tiny}, c.args...)
		if !slices.Contains(args, "--out") {
			args = append(args, "--out", out)
		} else {
			out = args[slices.Index(args, "--out")+1]
		}
		args = append(args, "--threads", "1", "--quiet")
		var before []string
		if c.out != "" {
			before = tree(t, out)
		}
		stdout, _, err := dllm(t, args...)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if msg := err.Error(); exitCode(err) != 2 || strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: exit %d, %q; want exit 2 and one line with %q", c.name, exitCode(err), msg, c.want)
		}
		if stdout != "" {
			t.Errorf("%s: printed %q", c.name, stdout)
		}
		if c.out == "" {
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s: left %s behind", c.name, out)
			}
		} else if after := tree(t, out); !slices.Equal(before, after) {
			t.Errorf("%s: --out changed from %v to %v", c.name, before, after)
		}
	}
}

// tree lists the paths under dir.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var ps []string
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		ps = append(ps, p)
		return err
	})
	return ps
}
