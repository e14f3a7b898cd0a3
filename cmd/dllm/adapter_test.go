package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
	"github.com/dllm-dev/dllm/serve"
)

// loraTiny converts the tiny llama with LoRA: final/ is the merged model,
// final/adapter the PEFT adapter of the same run.
func loraTiny(t *testing.T) (final, adapter, src string) {
	t.Helper()
	out, _ := convertTiny(t, "--lora-rank", "4", "--lora-alpha", "8", "--lr", "0.01")
	return filepath.Join(out, "final"), filepath.Join(out, "final", "adapter"), filepath.Join(moduleRoot(t), "testdata/tiny/llama")
}

func evalTaskJSON(t *testing.T, args ...string) []byte {
	t.Helper()
	stdout, stderr, err := dllm(t, append([]string{"eval"}, append(args, "--threads", "2", "--json")...)...)
	if err != nil {
		t.Fatalf("eval %v: %v\n%s", args, err, stderr)
	}
	return []byte(stdout)
}

// TestAdapterTask: eval --task with --adapter on the source scores every
// choice exactly as the merged final/ of the same LoRA run does, in AR and
// diffusion mode and for a generation task; with --compare SRC the adapter
// applies to the model only.
func TestAdapterTask(t *testing.T) {
	final, ad, src := loraTiny(t)
	tk := writeFile(t, "task.jsonl", tinyChoiceTask)
	for _, mode := range []string{"ar", "diffusion"} {
		var merged, adapted taskJSON
		json.Unmarshal(evalTaskJSON(t, final, "--task", tk, "--mode", mode, "--mc", "4"), &merged)
		json.Unmarshal(evalTaskJSON(t, src, "--adapter", ad, "--task", tk, "--mode", mode, "--mc", "4"), &adapted)
		if merged.N != 3 || merged.Accuracy == nil || !reflect.DeepEqual(merged.Examples, adapted.Examples) ||
			*merged.Accuracy != *adapted.Accuracy || merged.Tokens != adapted.Tokens {
			t.Fatalf("--mode %s: final/ %+v, source + --adapter %+v", mode, merged, adapted)
		}
	}

	// The run moved the weights: the source alone scores otherwise.
	var merged, plainAR taskJSON
	json.Unmarshal(evalTaskJSON(t, final, "--task", tk, "--mode", "ar"), &merged)
	json.Unmarshal(evalTaskJSON(t, src, "--task", tk, "--mode", "ar"), &plainAR)
	if reflect.DeepEqual(merged.Examples, plainAR.Examples) {
		t.Fatalf("final/ scores as the source does: %+v", merged.Examples)
	}

	var both struct{ Runs []taskJSON }
	json.Unmarshal(evalTaskJSON(t, src, "--adapter", ad, "--task", tk, "--compare", src, "--mc", "4"), &both)
	var plain, diff taskJSON
	json.Unmarshal(evalTaskJSON(t, src, "--task", tk), &plain)
	json.Unmarshal(evalTaskJSON(t, final, "--task", tk, "--mc", "4"), &diff)
	if len(both.Runs) != 2 || !reflect.DeepEqual(both.Runs[0].Examples, plain.Examples) ||
		!reflect.DeepEqual(both.Runs[1].Examples, diff.Examples) || both.Runs[1].Mode != "diffusion" ||
		!strings.Contains(both.Runs[1].Model, ad) || strings.Contains(both.Runs[0].Model, ad) {
		t.Fatalf("--compare: %+v\nsource alone %+v\nfinal/ %+v", both.Runs, plain, diff)
	}

	gen := writeFile(t, "gen.jsonl", "{\"prompt\": \"Once upon a time\", \"answer\": \"#### 3\"}\n{\"prompt\": \"The cat\", \"answer\": \"#### 4\"}\n")
	type genJSON struct {
		N        int
		Examples []struct{ Generation string }
	}
	var a, b genJSON
	json.Unmarshal(evalTaskJSON(t, final, "--task", gen, "--gen-len", "6", "--temperature", "0.8", "--seed", "3"), &a)
	json.Unmarshal(evalTaskJSON(t, src, "--adapter", ad, "--task", gen, "--gen-len", "6", "--temperature", "0.8", "--seed", "3"), &b)
	if a.N != 2 || !reflect.DeepEqual(a, b) {
		t.Fatalf("generation task: final/ %+v, source + --adapter %+v", a, b)
	}
}

// TestAdapterChat: generate --chat, chat and serve with --adapter on the
// source answer as the merged final/ does for the same seed; the chat
// template and sampler defaults come from the adapter folder (the tiny
// source has no template).
func TestAdapterChat(t *testing.T) {
	final, _ := sftTiny(t, "--lora-rank", "4", "--lora-alpha", "8", "--lr", "0.02")
	ad, src := filepath.Join(final, "adapter"), filepath.Join(moduleRoot(t), "testdata/tiny/llama")
	gen := []string{"--gen-len", "8", "--steps", "8", "--temperature", "0.9", "--seed", "11", "--threads", "2"}
	answer := func(args ...string) string {
		out, stderr, err := dllm(t, append(append(args, "--chat", "--system", "be brief", "--prompt", "who is cat 3"), gen...)...)
		if err != nil {
			t.Fatalf("generate %v --chat: %v\n%s", args, err, stderr)
		}
		return out
	}
	want := answer("generate", final)
	if got := answer("generate", src, "--adapter", ad); got != want {
		t.Fatalf("generate --chat: source + --adapter %q, final/ %q", got, want)
	}

	chat := func(args ...string) string {
		root := newRoot()
		var o, e bytes.Buffer
		root.SetIn(strings.NewReader("who is cat 3\nand then\n"))
		root.SetOut(&o)
		root.SetErr(&e)
		root.SetArgs(append(append([]string{"chat"}, args...), gen...))
		if err := root.Execute(); err != nil {
			t.Fatalf("chat %v: %v\n%s", args, err, e.String())
		}
		return o.String()
	}
	if a, b := chat(final), chat(src, "--adapter", ad); a != b || strings.Count(a, "\n") != 2 {
		t.Fatalf("chat: final/ %q, source + --adapter %q", a, b)
	}

	complete := func(dir, adapter string) string {
		ck, err := model.Open(dir, model.OpenOptions{Backend: cpu.New(2), Adapter: adapter})
		if err != nil {
			t.Fatal(err)
		}
		s, err := serve.New(ck, serve.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ts := httptest.NewServer(s.Handler())
		defer ts.Close()
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(
			`{"messages": [{"role": "user", "content": "who is cat 3"}], "max_tokens": 8, "temperature": 0.9, "seed": 11}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var r struct {
			Choices []struct{ Message struct{ Content string } }
		}
		if json.Unmarshal(b, &r); resp.StatusCode != 200 || len(r.Choices) != 1 {
			t.Fatalf("serve %s: %d %s", dir, resp.StatusCode, b)
		}
		return r.Choices[0].Message.Content
	}
	if a, b := complete(final, ""), complete(src, ad); a != b {
		t.Fatalf("serve: final/ %q, source + adapter %q", a, b)
	}
}

// TestAdapterErrors: a folder that is not a usable adapter for the model is
// refused by every command that takes --adapter, in one line naming it,
// exit 2.
func TestAdapterErrors(t *testing.T) {
	_, ad, src := loraTiny(t)
	data := smallText(t)
	tk := writeFile(t, "task.jsonl", tinyChoiceTask)
	copyAdapter := func(skip string, edit func(map[string]any)) string {
		dir := t.TempDir()
		entries, _ := os.ReadDir(ad)
		for _, en := range entries {
			if en.Name() == skip {
				continue
			}
			b, _ := os.ReadFile(filepath.Join(ad, en.Name()))
			if en.Name() == model.PEFTConfigName && edit != nil {
				var m map[string]any
				json.Unmarshal(b, &m)
				edit(m)
				b, _ = json.Marshal(m)
			}
			os.WriteFile(filepath.Join(dir, en.Name()), b, 0o644)
		}
		return dir
	}
	notJSON := copyAdapter("", nil)
	os.WriteFile(filepath.Join(notJSON, model.PEFTConfigName), []byte("{r: 4"), 0o644)
	pickled := copyAdapter("adapter_model.safetensors", nil)
	os.WriteFile(filepath.Join(pickled, "adapter_model.bin"), []byte("PK"), 0o644)
	bad := []struct{ dir, want string }{
		{t.TempDir(), "no adapter_config.json"},
		{filepath.Join(t.TempDir(), "absent"), "no adapter_config.json"},
		{notJSON, "not valid JSON"},
		{copyAdapter("adapter_model.safetensors", nil), "no adapter_model.safetensors"},
		{pickled, "safe_serialization"},
		{copyAdapter("", func(m map[string]any) { m["peft_type"] = "IA3" }), "only LORA adapters"},
		{copyAdapter("", func(m map[string]any) { m["use_dora"] = true }), "use_dora"},
	}
	// An adapter of another model: its matrices do not fit.
	qwen := filepath.Join(moduleRoot(t), "testdata/tiny/qwen2")
	tmpl := filepath.Join(moduleRoot(t), "testdata/chat/chatml.jinja")
	for _, c := range bad {
		for _, args := range [][]string{
			{"eval", src, "--task", tk},
			{"eval", src, "--task", tk, "--mode", "ar", "--compare", src},
			{"eval", src, "--data", data},
			{"generate", src, "--prompt", "hi"},
			{"generate", src, "--chat", "--prompt", "hi", "--chat-template", tmpl},
			{"chat", src, "--chat-template", tmpl},
			{"serve", src, "--port", "0"},
		} {
			_, _, err := dllm(t, append(args, "--adapter", c.dir, "--threads", "1")...)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--adapter") ||
				strings.Contains(err.Error(), "\n") || exitCode(err) != 2 {
				t.Errorf("%v --adapter %s: %v (exit %d); want one line with %q, exit 2", args, c.dir, err, exitCode(err), c.want)
			}
		}
	}
	_, _, err := dllm(t, "eval", qwen, "--task", tk, "--adapter", ad, "--mode", "ar", "--threads", "1")
	if err == nil || !strings.Contains(err.Error(), "trained on another model") || strings.Contains(err.Error(), "\n") || exitCode(err) != 2 {
		t.Errorf("an adapter of another model: %v (exit %d), want exit 2", err, exitCode(err))
	}
}

// TestLoRAMoE: LoRA on a mixture-of-experts model adapts attention and
// every expert's projections: the merged final/ keeps every router, norm and
// (on an attention-only run) expert tensor of the source, and evaluates as
// the source with --adapter does.
func TestLoRAMoE(t *testing.T) {
	for _, c := range []struct {
		arch    string
		targets []string
	}{{"qwen2_moe", nil}, {"qwen3_moe", []string{"--lora-targets", "q_proj,k_proj,v_proj,o_proj"}}, {"mixtral", nil}} {
		t.Run(c.arch, func(t *testing.T) { loraMoE(t, c.arch, c.targets) })
	}
}

func loraMoE(t *testing.T, arch string, targets []string) {
	src := filepath.Join(moduleRoot(t), "testdata/tiny", arch)
	data := smallText(t)
	out := filepath.Join(t.TempDir(), "run")
	args := append([]string{"convert", src, "--data", data, "--out", out, "--steps", "4", "--seq-len", "32", "--batch-size", "4",
		"--eval-fraction", "0.2", "--eval-rows", "6", "--eval-mc", "3", "--seed", "9", "--threads", "2", "--quiet",
		"--lora-rank", "4", "--lora-alpha", "8", "--lr", "0.01"}, targets...)
	if _, stderr, err := dllm(t, args...); err != nil {
		t.Fatalf("convert: %v\n%s", err, stderr)
	}
	final := filepath.Join(out, "final")
	a, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := safetensors.Open(final)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	experts := targets == nil
	same, moved, movedExperts := 0, 0, 0
	for _, name := range a.Names() {
		x, _ := a.Float32(name)
		y, err := b.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		// Experts, the shared expert and dense layers; never the router.
		ffn := strings.HasSuffix(name, "_proj.weight") || strings.HasSuffix(name, ".w1.weight") ||
			strings.HasSuffix(name, ".w2.weight") || strings.HasSuffix(name, ".w3.weight")
		adapted := strings.Contains(name, "self_attn") && strings.Contains(name, "proj") || experts && ffn
		switch {
		case strings.Contains(name, "embed_tokens") || strings.Contains(name, "lm_head"):
		case adapted:
			if !reflect.DeepEqual(x, y) {
				moved++
				if strings.Contains(name, "experts.") {
					movedExperts++
				}
			}
		case !reflect.DeepEqual(x, y):
			t.Errorf("%s changed, though no adapter targets it", name)
		default:
			same++
		}
	}
	if moved == 0 || same == 0 || (experts && movedExperts == 0) {
		t.Fatalf("%d adapted tensors moved (%d of experts), %d others kept", moved, movedExperts, same)
	}
	// final/ is stored in the source's BF16, --adapter merges in fp32; the
	// run moved the bound by far more than that.
	var sum struct {
		Before struct{ NELBO float64 } `json:"eval_before"`
	}
	raw, _ := os.ReadFile(filepath.Join(out, "summary.json"))
	json.Unmarshal(raw, &sum)
	m, ad := adapterNELBO(t, data, final), adapterNELBO(t, data, src, "--adapter", filepath.Join(final, "adapter"))
	if m == 0 || math.Abs(m-ad) > 1e-5*m || !(math.Abs(sum.Before.NELBO-m) > 1e-4*m) {
		t.Fatalf("NELBO of final/ %v, of the source with --adapter %v, before the run %v", m, ad, sum.Before.NELBO)
	}
}
