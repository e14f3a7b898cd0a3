package model

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/safetensors"
)

// moduleRoot is the folder holding go.mod.
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

// sharedModel is ../shared/models/NAME (sharedDir skips when ../shared is
// absent).
func sharedModel(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(sharedDir(t), "models", name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s is absent: skipping", p)
	}
	return p
}

func openModel(t *testing.T, dir string) (*Config, *safetensors.Reader) {
	t.Helper()
	cfg, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return cfg, r
}

func TestTensorNames(t *testing.T) {
	names := func(c *Config) []string {
		var out []string
		for _, s := range c.Tensors() {
			if strings.HasPrefix(s.Name, "model.layers.0.") || !strings.HasPrefix(s.Name, "model.layers.") {
				out = append(out, fmt.Sprint(s.Name, s.Shape))
			}
		}
		return out
	}
	q2 := mustParse(t, qwen25Config)
	want := []string{
		"model.embed_tokens.weight[151936 896]",
		"model.layers.0.input_layernorm.weight[896]",
		"model.layers.0.self_attn.q_proj.weight[896 896]",
		"model.layers.0.self_attn.q_proj.bias[896]",
		"model.layers.0.self_attn.k_proj.weight[128 896]",
		"model.layers.0.self_attn.k_proj.bias[128]",
		"model.layers.0.self_attn.v_proj.weight[128 896]",
		"model.layers.0.self_attn.v_proj.bias[128]",
		"model.layers.0.self_attn.o_proj.weight[896 896]",
		"model.layers.0.post_attention_layernorm.weight[896]",
		"model.layers.0.mlp.gate_proj.weight[4864 896]",
		"model.layers.0.mlp.up_proj.weight[4864 896]",
		"model.layers.0.mlp.down_proj.weight[896 4864]",
		"model.norm.weight[896]",
	}
	if got := names(q2); !slices.Equal(got, want) {
		t.Errorf("qwen2:\n%s", strings.Join(got, "\n"))
	}
	q3 := names(mustParse(t, qwen3Config))
	for _, w := range []string{
		"model.layers.0.self_attn.q_proj.weight[2048 1024]",
		"model.layers.0.self_attn.o_proj.weight[1024 2048]",
		"model.layers.0.self_attn.q_norm.weight[128]",
		"model.layers.0.self_attn.k_norm.weight[128]",
	} {
		if !slices.Contains(q3, w) {
			t.Errorf("qwen3 lacks %s", w)
		}
	}
	if slices.ContainsFunc(q3, func(s string) bool { return strings.Contains(s, "bias") }) {
		t.Error("qwen3 without attention_bias has biases")
	}
	m := names(mustParse(t, mistralConfig))
	if m[len(m)-1] != "lm_head.weight[32000 4096]" {
		t.Errorf("untied mistral ends with %s", m[len(m)-1])
	}
	l := names(mustParse(t, llamaLinearConfig))
	if !slices.Contains(l, "model.layers.0.self_attn.o_proj.bias[512]") {
		t.Error("llama with attention_bias lacks o_proj.bias")
	}
}

func TestStories260K(t *testing.T) {
	cfg, r := openModel(t, sharedModel(t, "stories260K"))
	if cfg.ModelType != "llama" || cfg.Layers != 5 || cfg.Heads != 8 || cfg.KVHeads != 4 || cfg.HeadDim != 8 ||
		cfg.Hidden != 64 || cfg.Intermediate != 172 || cfg.Vocab != 512 || !cfg.TieEmbeddings {
		t.Errorf("config %+v", cfg)
	}
	if n := cfg.ParamCount(); n != 260_032 {
		t.Errorf("%d parameters, want 260,032", n)
	}
	problems, tied := cfg.Check(r)
	if len(problems) != 0 {
		t.Errorf("problems: %v", problems)
	}
	if tied != "embed_tokens" {
		t.Errorf("tied stored as %q", tied)
	}
	// Every expected tensor is there and the counts agree with the file.
	var stored int64
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		stored += info.Elements()
	}
	if stored != cfg.ParamCount() {
		t.Errorf("file holds %d values, config counts %d", stored, cfg.ParamCount())
	}
}

func TestTinyStories656K(t *testing.T) {
	cfg, r := openModel(t, sharedModel(t, "TinyStories-656K"))
	if n := cfg.ParamCount(); n != 656_000 {
		t.Errorf("%d parameters, want 656,000", n)
	}
	if cfg.Layers != 2 || cfg.Heads != 8 || cfg.KVHeads != 4 || cfg.HeadDim != 16 || cfg.Vocab != 2048 {
		t.Errorf("config %+v", cfg)
	}
	problems, tied := cfg.Check(r)
	if len(problems) != 0 {
		t.Errorf("problems: %v", problems)
	}
	if tied != "lm_head" || r.Has(EmbedName) {
		t.Errorf("tied stored as %q (embed present: %v)", tied, r.Has(EmbedName))
	}
}

// tinyConfig is a 1-layer llama small enough to write in a test.
const tinyConfig = `{"model_type": "llama", "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
  "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, "tie_word_embeddings": %v}`

// doctored writes the tensors the config expects, changed by edit (which
// may delete entries or change shapes), with safetensors.Write.
func doctored(t *testing.T, tied bool, edit func(map[string][]int64)) (*Config, *safetensors.Reader) {
	t.Helper()
	cfg, err := ParseConfig([]byte(fmt.Sprintf(tinyConfig, tied)))
	if err != nil {
		t.Fatal(err)
	}
	shapes := map[string][]int64{}
	for _, s := range cfg.Tensors() {
		shape := make([]int64, len(s.Shape))
		for i, d := range s.Shape {
			shape[i] = int64(d)
		}
		shapes[s.Name] = shape
	}
	edit(shapes)
	var specs []safetensors.Spec
	for n, s := range shapes {
		specs = append(specs, safetensors.Spec{Name: n, Shape: s})
	}
	dir := t.TempDir()
	if _, err := safetensors.Write(dir, specs, func(string, []float32) error { return nil }, safetensors.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := safetensors.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return cfg, r
}

func TestCheckProblems(t *testing.T) {
	const q = "model.layers.0.self_attn.q_proj.weight"
	for _, c := range []struct {
		name  string
		tied  bool
		edit  func(map[string][]int64)
		want  []string // "tensor kind"
		tiedA string
	}{
		{"clean", false, func(map[string][]int64) {}, nil, ""},
		{"clean tied", true, func(map[string][]int64) {}, nil, "embed_tokens"},
		{"tied as lm_head", true, func(m map[string][]int64) { m[LMHeadName] = m[EmbedName]; delete(m, EmbedName) }, nil, "lm_head"},
		{"tied stored twice", true, func(m map[string][]int64) { m[LMHeadName] = m[EmbedName] }, nil, "both"},
		{"tied stored twice, lm_head wrong", true, func(m map[string][]int64) { m[LMHeadName] = []int64{10, 9} },
			[]string{LMHeadName + " shape"}, "both"},
		{"missing", false, func(m map[string][]int64) { delete(m, q); delete(m, LMHeadName) },
			[]string{q + " missing", LMHeadName + " missing"}, ""},
		{"missing tied embedding", true, func(m map[string][]int64) { delete(m, EmbedName) },
			[]string{EmbedName + " missing"}, "embed_tokens"},
		{"unexpected", false, func(m map[string][]int64) { m["model.layers.1.mlp.up_proj.weight"] = []int64{12, 8}; m["extra"] = nil },
			[]string{"extra unexpected", "model.layers.1.mlp.up_proj.weight unexpected"}, ""},
		{"inv_freq is ignored", false, func(m map[string][]int64) { m["model.layers.0.self_attn.rotary_emb.inv_freq"] = []int64{2} }, nil, ""},
		{"wrong shape", false, func(m map[string][]int64) { m[q] = []int64{8, 9}; m[NormName] = []int64{8, 1} },
			[]string{q + " shape", NormName + " shape"}, ""},
		{"transposed", false, func(m map[string][]int64) { m["model.layers.0.mlp.down_proj.weight"] = []int64{12, 8} },
			[]string{"model.layers.0.mlp.down_proj.weight shape"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, r := doctored(t, c.tied, c.edit)
			problems, tied := cfg.Check(r)
			var got []string
			for _, p := range problems {
				got = append(got, p.Tensor+" "+p.Kind)
				if p.Detail == "" || !strings.Contains(p.String(), p.Tensor) {
					t.Errorf("problem %+v does not explain itself", p)
				}
			}
			slices.Sort(got)
			slices.Sort(c.want)
			if !slices.Equal(got, c.want) {
				t.Errorf("problems %v, want %v", problems, c.want)
			}
			if tied != c.tiedA {
				t.Errorf("tied stored as %q, want %q", tied, c.tiedA)
			}
		})
	}
}

func TestCheckDType(t *testing.T) {
	// An I64 tensor where a weight belongs (the writer only writes floats,
	// so the file is put together by hand).
	cfg, err := ParseConfig([]byte(fmt.Sprintf(tinyConfig, true)))
	if err != nil {
		t.Fatal(err)
	}
	hdr := "{"
	var off int64
	for i, s := range cfg.Tensors() {
		dt, size := "F32", int64(4)
		if s.Name == NormName {
			dt, size = "I64", 8
		}
		n := int64(s.Elements()) * size
		if i > 0 {
			hdr += ","
		}
		hdr += fmt.Sprintf(`"%s":{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, s.Name, dt, strings.ReplaceAll(fmt.Sprint(s.Shape), " ", ","), off, off+n)
		off += n
	}
	hdr += "}"
	var b bytes.Buffer
	b.Write([]byte{byte(len(hdr)), byte(len(hdr) >> 8), 0, 0, 0, 0, 0, 0})
	b.WriteString(hdr)
	b.Write(make([]byte, off))
	p := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := safetensors.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	problems, _ := cfg.Check(r)
	if len(problems) != 1 || problems[0].Tensor != NormName || problems[0].Kind != "dtype" || !strings.Contains(problems[0].Detail, "I64") {
		t.Errorf("problems %v", problems)
	}
}

var tinyCheckpoints = []struct {
	name   string
	typ    string
	files  int
	tiedAs string
}{
	{"llama", "llama", 1, "embed_tokens"},
	{"llama-sharded", "llama", 3, ""},
	{"qwen2", "qwen2", 1, ""},
	{"qwen3", "qwen3", 1, "embed_tokens"},
	{"qwen2_moe", "qwen2_moe", 1, ""},
	{"qwen3_moe", "qwen3_moe", 1, "embed_tokens"},
	{"mixtral", "mixtral", 1, ""},
}

func TestTinyCheckpoints(t *testing.T) {
	root := filepath.Join(moduleRoot(t), "testdata", "tiny")
	for _, c := range tinyCheckpoints {
		t.Run(c.name, func(t *testing.T) {
			cfg, r := openModel(t, filepath.Join(root, c.name))
			problems, tied := cfg.Check(r)
			if len(problems) != 0 || tied != c.tiedAs {
				t.Errorf("problems %v, tied as %q", problems, tied)
			}
			if cfg.ModelType != c.typ || len(r.Files) != c.files || cfg.Layers != 2 || cfg.Heads != 4 || cfg.KVHeads != 2 || cfg.Vocab != 384 {
				t.Errorf("%s: %+v in %d files", cfg.ModelType, cfg, len(r.Files))
			}
			if (c.files > 1) != (r.Index != nil) {
				t.Errorf("index %v with %d files", r.Index != nil, len(r.Files))
			}
			switch c.name {
			case "qwen2":
				if !cfg.QKVBias || cfg.OBias || cfg.TieEmbeddings {
					t.Error("qwen2: want q/k/v biases, no o bias, untied")
				}
			case "qwen3":
				if !cfg.QKNorm || cfg.HeadDim == cfg.Hidden/cfg.Heads {
					t.Errorf("qwen3: q/k norm %v, head_dim %d", cfg.QKNorm, cfg.HeadDim)
				}
			case "qwen2_moe":
				if m := cfg.MoE; m == nil || m.Experts != 4 || m.TopK != 2 || m.NormTopK || m.SharedIntermediate != 64 || !cfg.QKVBias ||
					!slices.Equal(cfg.SparseLayers(), []int{1}) || !r.Has("model.layers.0.mlp.gate_proj.weight") ||
					!r.Has("model.layers.1.mlp.shared_expert_gate.weight") || !r.Has("model.layers.1.mlp.experts.3.down_proj.weight") {
					t.Errorf("qwen2_moe: %+v, sparse layers %v", cfg.MoE, cfg.SparseLayers())
				}
			case "qwen3_moe":
				if m := cfg.MoE; m == nil || m.Experts != 8 || !m.NormTopK || m.Shared() || !cfg.QKNorm || len(cfg.SparseLayers()) != 2 {
					t.Errorf("qwen3_moe: %+v", cfg.MoE)
				}
			case "mixtral":
				if m := cfg.MoE; m == nil || m.Experts != 4 || !m.NormTopK || m.Intermediate != 48 || !r.Has("model.layers.1.block_sparse_moe.experts.3.w3.weight") {
					t.Errorf("mixtral: %+v", cfg.MoE)
				}
			}
			// Weights are small and norms near 1, and every value reads.
			for _, n := range r.Names() {
				v, err := r.Float32(n)
				if err != nil {
					t.Fatal(err)
				}
				var sum, sq float64
				for _, x := range v {
					sum += float64(x)
					sq += float64(x) * float64(x)
				}
				mean := sum / float64(len(v))
				std := sq/float64(len(v)) - mean*mean
				isNorm := strings.HasSuffix(n, "norm.weight")
				if (isNorm && (mean < 0.98 || mean > 1.02)) || (!isNorm && (mean < -0.01 || mean > 0.01)) || std > 0.03*0.03 || std < 0.01*0.01 {
					t.Errorf("%s: mean %g, variance %g", n, mean, std)
				}
			}
		})
	}
	// The sharded llama holds the plain llama's weights (it is the same
	// model, untied and stored in bf16).
	_, a := openModel(t, filepath.Join(root, "llama"))
	_, b := openModel(t, filepath.Join(root, "llama-sharded"))
	for _, n := range a.Names() {
		x, _ := a.Float32(n)
		y, err := b.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		for i := range x {
			if d := x[i] - y[i]; d > 0.01*max(x[i], -x[i]) || d < -0.01*max(x[i], -x[i]) {
				t.Fatalf("%s[%d]: %g vs %g", n, i, x[i], y[i])
			}
		}
	}
}

// TestTinyGeneratorNoDrift runs `go run ./testdata/gen` into a temporary
// folder and wants the committed testdata/tiny byte for byte.
func TestTinyGeneratorNoDrift(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs testdata/gen; skipped in -short")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root := moduleRoot(t)
	out := t.TempDir()
	cmd := exec.Command(goBin, "run", "./testdata/gen", "-out", out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./testdata/gen: %v\n%s", err, b)
	}
	committed := filepath.Join(root, "testdata", "tiny")
	want := readTree(t, out)
	got := readTree(t, committed)
	for name, b := range want {
		c, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s is generated but not in testdata/tiny: run go run ./testdata/gen", name)
		case !bytes.Equal(b, c):
			t.Errorf("testdata/tiny/%s differs from what testdata/gen writes: run go run ./testdata/gen", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("testdata/tiny/%s is not written by testdata/gen: remove it", name)
		}
	}
}

func readTree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)], err = os.ReadFile(p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
