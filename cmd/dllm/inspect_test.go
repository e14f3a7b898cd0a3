package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// dllm runs the command tree in-process, as main would, and returns what
// it printed.
func dllm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRoot()
	var o, e bytes.Buffer
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(args)
	err = root.Execute()
	return o.String(), e.String(), err
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's folder")
		}
		dir = parent
	}
}

func sharedModel(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(moduleRoot(t)), "shared", "models", name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s is absent (../shared holds the reference models; present in CI): skipping", p)
	}
	return p
}

// field finds the line "key: value" of the text report.
func field(t *testing.T, out, key string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %q line in\n%s", key, out)
	return ""
}

func TestInspectStories260K(t *testing.T) {
	dir := sharedModel(t, "stories260K")
	out, _, err := dllm(t, "inspect", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for key, want := range map[string]string{
		"architecture":     "llama (LlamaForCausalLM)",
		"parameters":       "260,032",
		"layers":           "5",
		"heads / kv heads": "8 / 4 (head_dim 8)",
		"vocab":            "512",
		"tied embeddings":  "yes, stored as embed_tokens",
		"dtypes":           "F32 x47",
		"on disk":          "1,044,992 bytes in model.safetensors",
		"check":            "ok: every tensor matches config.json",
	} {
		if got := field(t, out, key); got != want {
			t.Errorf("%s: %q, want %q", key, got, want)
		}
	}
	if strings.Contains(out, "tensors:") {
		t.Error("tensors listed without --tensors")
	}
}

func TestInspectTinyStories656K(t *testing.T) {
	dir := sharedModel(t, "TinyStories-656K")
	out, _, err := dllm(t, "inspect", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := field(t, out, "parameters"); got != "656,000" {
		t.Errorf("parameters %q", got)
	}
	if got := field(t, out, "tied embeddings"); got != "yes, stored as lm_head" {
		t.Errorf("tied embeddings %q", got)
	}
}

type jsonReport struct {
	ModelType    string          `json:"model_type"`
	Parameters   int64           `json:"parameters"`
	Layers       int             `json:"layers"`
	Heads        int             `json:"heads"`
	KVHeads      int             `json:"kv_heads"`
	HeadDim      int             `json:"head_dim"`
	TiedStoredAs string          `json:"tied_stored_as"`
	Files        []string        `json:"files"`
	DTypes       map[string]int  `json:"dtypes"`
	Problems     []model.Problem `json:"problems"`
	Consistent   bool            `json:"consistent"`
	Tensors      []tensorRow     `json:"tensors"`
	Metadata     map[string]string
	Hidden       int        `json:"hidden_size"`
	MoE          *moeReport `json:"moe"`
}

func inspectJSON(t *testing.T, args ...string) (jsonReport, error) {
	t.Helper()
	out, _, err := dllm(t, append([]string{"inspect", "--json"}, args...)...)
	var rep jsonReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("--json output does not parse: %v\n%s", jerr, out)
	}
	var raw map[string]any
	json.Unmarshal([]byte(out), &raw)
	if p, ok := raw["problems"]; !ok || p == nil {
		t.Errorf("problems is %v, want a list", p)
	}
	return rep, err
}

func TestInspectJSON(t *testing.T) {
	rep, err := inspectJSON(t, sharedModel(t, "stories260K"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.ModelType != "llama" || rep.Parameters != 260_032 || rep.Layers != 5 || rep.Heads != 8 || rep.KVHeads != 4 ||
		rep.HeadDim != 8 || rep.TiedStoredAs != "embed_tokens" || !rep.Consistent || len(rep.Problems) != 0 ||
		rep.DTypes["F32"] != 47 || len(rep.Files) != 1 || len(rep.Tensors) != 0 {
		t.Errorf("%+v", rep)
	}
	rep, err = inspectJSON(t, "--tensors", sharedModel(t, "TinyStories-656K"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Parameters != 656_000 || rep.TiedStoredAs != "lm_head" || len(rep.Tensors) != 20 {
		t.Errorf("%+v", rep)
	}
	if rep.Metadata["model.embed_tokens.weight"] != "lm_head.weight" {
		t.Errorf("metadata %v", rep.Metadata)
	}
}

func TestInspectTensors(t *testing.T) {
	dir := sharedModel(t, "stories260K")
	out, _, err := dllm(t, "inspect", "--tensors", dir)
	if err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(out, "tensors:\n")
	if !ok {
		t.Fatalf("no tensor list in\n%s", out)
	}
	rows := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.HasPrefix(line, "  model.") {
			rows++
		}
	}
	if rows != 47 {
		t.Errorf("%d tensor rows, want 47", rows)
	}
	for _, want := range []string{"model.embed_tokens.weight", "[512 64]", "model.layers.4.mlp.down_proj.weight", "[64 172]", "model.safetensors"} {
		if !strings.Contains(list, want) {
			t.Errorf("tensor list lacks %q", want)
		}
	}
}

// TestInspectDoctored: weights that disagree with config.json are listed
// and make inspect fail.
func TestInspectDoctored(t *testing.T) {
	src := filepath.Join(moduleRoot(t), "testdata", "tiny", "llama")
	cfgJSON, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(cfgJSON)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	const bad = "model.layers.1.self_attn.k_proj.weight"
	var specs []safetensors.Spec
	for _, s := range cfg.Tensors() {
		shape := []int64{int64(s.Shape[0])}
		if len(s.Shape) == 2 {
			shape = append(shape, int64(s.Shape[1]))
		}
		if s.Name == bad {
			shape[0]++
		}
		specs = append(specs, safetensors.Spec{Name: s.Name, Shape: shape})
	}
	if _, err := safetensors.Write(dir, specs, func(string, []float32) error { return nil }, safetensors.WriteOptions{}); err != nil {
		t.Fatal(err)
	}

	out, _, err := dllm(t, "inspect", dir)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("error %v (%T), want exit code 1", err, err)
	}
	if !strings.Contains(err.Error(), "1 inconsistencies") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q", err)
	}
	if got := field(t, out, "check"); got != "1 problems" || !strings.Contains(out, bad+": shape [17 32], config expects [16 32]") {
		t.Errorf("report:\n%s", out)
	}
	rep, err := inspectJSON(t, dir)
	if err == nil || rep.Consistent || len(rep.Problems) != 1 || rep.Problems[0].Tensor != bad || rep.Problems[0].Kind != "shape" {
		t.Errorf("json %+v, %v", rep, err)
	}
}

// TestInspectBadPath: a missing folder, a file and a folder without a model
// each give one line naming the path, and print nothing on stdout.
func TestInspectBadPath(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "config.json")
	if err := os.WriteFile(file, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(tmp, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{filepath.Join(tmp, "missing"), "no such folder"},
		{file, "is a file, not a folder"},
		{empty, "has no config.json"},
	} {
		out, _, err := dllm(t, "inspect", c.path)
		if err == nil {
			t.Fatalf("%s: no error", c.path)
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, c.path) || !strings.Contains(msg, c.want) {
			t.Errorf("%s: error %q, want one line with the path and %q", c.path, msg, c.want)
		}
		if out != "" {
			t.Errorf("%s: printed %q", c.path, out)
		}
	}
	if _, _, err := dllm(t, "inspect"); err == nil {
		t.Error("inspect without a folder succeeded")
	}
}

func TestInspectTinyCheckpoints(t *testing.T) {
	root := filepath.Join(moduleRoot(t), "testdata", "tiny")
	for _, c := range []struct {
		name, typ, features string
		files               int
	}{
		{"llama", "llama", "", 1},
		{"llama-sharded", "llama", "", 3},
		{"qwen2", "qwen2", "q/k/v bias", 1},
		{"qwen3", "qwen3", "q/k norm", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(root, c.name)
			out, _, err := dllm(t, "inspect", dir)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if got := field(t, out, "check"); got != "ok: every tensor matches config.json" {
				t.Errorf("check %q", got)
			}
			if got := field(t, out, "architecture"); !strings.HasPrefix(got, c.typ+" (") {
				t.Errorf("architecture %q", got)
			}
			if c.features != "" && !strings.Contains(field(t, out, "features"), c.features) {
				t.Errorf("features %q", field(t, out, "features"))
			}
			rep, err := inspectJSON(t, dir)
			if err != nil || !rep.Consistent || len(rep.Files) != c.files {
				t.Errorf("json %+v, %v", rep, err)
			}
			if c.files == 3 {
				want := "model-00001-of-00003.safetensors, model-00002-of-00003.safetensors, model-00003-of-00003.safetensors"
				if !strings.HasSuffix(field(t, out, "on disk"), want) {
					t.Errorf("on disk: %q", field(t, out, "on disk"))
				}
			}
		})
	}
}

// TestInspectMoE: experts, top-k, the shared expert, the sparse layers and
// total/active parameters of the tiny MoE checkpoints, in text and JSON.
func TestInspectMoE(t *testing.T) {
	root := filepath.Join(moduleRoot(t), "testdata", "tiny")
	for _, c := range []struct {
		name, experts, shared, sparse string
		active                        int64
		renorm                        bool
	}{
		// idle experts per sparse layer: (E - k) * 3 * expert ffn * hidden
		{"qwen2_moe", "4, top-2 (weights not renormalised), expert ffn 32", "ffn 64, scaled by sigmoid(shared_expert_gate x)", "1 of 2 (1); the others dense", 58_816 - 2*3*32*32, false},
		{"qwen3_moe", "8, top-2 (weights renormalised), expert ffn 24", "", "2 of 2 (0 1); the others dense", 0, true},
		{"mixtral", "4, top-2 (weights renormalised), expert ffn 48", "", "2 of 2 (0 1); the others dense", 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(root, c.name)
			out, _, err := dllm(t, "inspect", dir)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if got := field(t, out, "experts"); got != c.experts {
				t.Errorf("experts %q", got)
			}
			if got := field(t, out, "sparse layers"); got != c.sparse {
				t.Errorf("sparse layers %q", got)
			}
			if c.shared != "" && field(t, out, "shared expert") != c.shared {
				t.Errorf("shared expert %q", field(t, out, "shared expert"))
			}
			if c.shared == "" && strings.Contains(out, "shared expert:") {
				t.Errorf("a shared expert in\n%s", out)
			}
			rep, err := inspectJSON(t, dir)
			if err != nil || !rep.Consistent || rep.MoE == nil || rep.MoE.NormTopK != c.renorm {
				t.Fatalf("json %+v, %v", rep, err)
			}
			m := rep.MoE
			idle := int64(m.Experts-m.TopK) * 3 * int64(m.ExpertIntermediate) * int64(rep.Hidden) * int64(len(m.SparseLayers))
			if m.ActiveParameters != rep.Parameters-idle || m.ActiveParameters >= rep.Parameters || (c.active > 0 && m.ActiveParameters != c.active) {
				t.Errorf("active %d of %d parameters", m.ActiveParameters, rep.Parameters)
			}
			if got := field(t, out, "active params"); got != commas(m.ActiveParameters)+" per token" {
				t.Errorf("active params %q", got)
			}
		})
	}
}
