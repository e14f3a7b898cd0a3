package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadModelFolder: every command given a model folder that is not there,
// a file, a folder without config.json, one whose config.json is not JSON,
// one without weights or the --out folder of a convert run exits 2 with one
// line naming the folder, prints nothing on stdout and writes nothing.
func TestBadModelFolder(t *testing.T) {
	root := moduleRoot(t)
	tiny := filepath.Join(root, "testdata/tiny/llama")
	tmpl := filepath.Join(root, "testdata/chat/chatml.jinja")
	tmp := t.TempDir()
	copyTiny := func(name string, files ...string) string {
		dir := filepath.Join(tmp, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(tiny, f))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
		return dir
	}
	file := filepath.Join(tmp, "notes.txt")
	os.WriteFile(file, []byte("not a model"), 0o644)
	notJSON := copyTiny("notjson", "tokenizer.json")
	os.WriteFile(filepath.Join(notJSON, "config.json"), []byte("{model_type: llama"), 0o644)
	run := copyTiny("run")
	copyTiny("run/final", "config.json")
	bad := []struct{ name, dir, want string }{
		{"absent", filepath.Join(tmp, "absent"), "no such folder"},
		{"file", file, ""}, // a file: "is a file, not a folder", or not valid JSON where a config.json file is taken
		{"empty", copyTiny("empty"), "has no config.json"},
		{"notjson", notJSON, "not valid JSON"},
		{"noweights", copyTiny("noweights", "config.json", "tokenizer.json", "tokenizer_config.json"), "has no weights"},
		{"run", run, "pass " + filepath.Join(run, "final")},
	}
	data := smallText(t)
	tk := writeFile(t, "task.jsonl", tinyChoiceTask)
	msgs := writeFile(t, "chat.json", `[{"role": "user", "content": "hi"}]`)
	out := filepath.Join(tmp, "out")
	commands := []struct {
		args func(dir string) []string
		skip string // the bad folders the command does not refuse for what they are
		want string // instead of the folder's
	}{
		{func(d string) []string { return []string{"generate", d, "--prompt", "hi"} }, "noweights", ""}, // no "dllm" block, refused first
		{func(d string) []string { return []string{"generate", d, "--ar", "--prompt", "hi"} }, "", ""},
		{func(d string) []string { return []string{"generate", d, "--ar", "--ids", "1,2"} }, "", ""},
		{func(d string) []string { return []string{"chat", d, "--ar", "--chat-template", tmpl} }, "", ""},
		{func(d string) []string { return []string{"serve", d, "--port", "0"} }, "noweights", ""},
		{func(d string) []string { return []string{"plan", d} }, "noweights", ""},
		{func(d string) []string { return []string{"inspect", d} }, "", ""},
		{func(d string) []string { return []string{"eval", d, "--data", data} }, "", ""},
		{func(d string) []string { return []string{"eval", d, "--data", data, "--mode", "ar"} }, "", ""},
		{func(d string) []string { return []string{"eval", d, "--task", tk, "--mode", "ar"} }, "", ""},
		{func(d string) []string { return []string{"eval", tiny, "--task", tk, "--mode", "ar", "--compare", d} }, "", ""},
		{func(d string) []string { return []string{"logits", "--model", d, "--ids", "1,2", "--out", out} }, "", ""},
		{func(d string) []string { return []string{"bench", "--model", d, "--steps", "1"} }, "", ""},
		{func(d string) []string { return []string{"convert", d, "--data", data, "--out", out, "--steps", "1"} }, "", ""},
		{func(d string) []string { return []string{"convert", d, "--out", out} }, "", ""}, // the source before the missing --data
		// A tokenizer folder: what it lacks is tokenizer.json.
		{func(d string) []string { return []string{"tokenize", d, "--text", "hi"} }, "notjson noweights", "tokenizer"},
		{func(d string) []string { return []string{"template", d, "--messages", msgs} }, "file empty notjson noweights run", ""},
	}
	for _, c := range commands {
		for _, b := range bad {
			if strings.Contains(" "+c.skip+" ", " "+b.name+" ") {
				continue
			}
			args := append(c.args(b.dir), "--threads", "1")
			if args[0] == "plan" || args[0] == "inspect" || args[0] == "tokenize" || args[0] == "template" {
				args = args[:len(args)-2]
			}
			stdout, _, err := dllm(t, args...)
			if err == nil {
				t.Errorf("%s: no error", strings.Join(args, " "))
				continue
			}
			msg, want := err.Error(), b.want
			if c.want != "" {
				want = c.want
			}
			if exitCode(err) != 2 || strings.Contains(msg, "\n") || !strings.Contains(msg, b.dir) || !strings.Contains(msg, want) {
				t.Errorf("%s: exit %d, %q; want exit 2 and one line naming the folder with %q", strings.Join(args, " "), exitCode(err), msg, want)
			}
			if stdout != "" {
				t.Errorf("%s: printed %q", strings.Join(args, " "), stdout)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s: left %s behind", strings.Join(args, " "), out)
				os.RemoveAll(out)
			}
		}
	}
}
