package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/kernels/kernelcheck"
)

// The training-step check passes with the CPU on both sides.
func TestCheckTrainingCPU(t *testing.T) {
	for arch := range tinyConfigs {
		var got []kernelcheck.Case
		if err := checkTraining(cpu.New(2), cpu.New(1), arch, 1, func(c kernelcheck.Case) { got = append(got, c) }); err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Fatalf("%s: %d cases", arch, len(got))
		}
		for _, c := range got {
			if !c.Pass {
				t.Errorf("%s: %+v", arch, c)
			}
		}
	}
}

func gpucheckErr(t *testing.T) error {
	root := newRoot()
	root.SetArgs([]string{"gpucheck", "--out", t.TempDir()})
	var out bytes.Buffer
	root.SetOut(&out)
	return root.Execute()
}

func TestGPUCheckWithoutDriver(t *testing.T) {
	t.Setenv("DLLM_LIBCUDA", filepath.Join(t.TempDir(), "libcuda.so.1"))
	if err := gpucheckErr(t); err == nil || !strings.Contains(err.Error(), "no CUDA driver found") {
		t.Errorf("err = %v", err)
	}
}

// A driver but no visible GPU (the fake libcuda's cuInit says
// CUDA_ERROR_NO_DEVICE): gpucheck and --device cuda say so in one line,
// --device auto runs on the CPU after one line.
func TestNoVisibleGPU(t *testing.T) {
	fake := buildFakeDriver(t)
	t.Setenv("DLLM_LIBCUDA", fake)
	t.Setenv("DLLM_CUBLAS", fake)
	t.Setenv("DLLM_FAKECUDA_NO_DEVICE", "1")
	err := gpucheckErr(t)
	if err == nil || !strings.Contains(err.Error(), "no visible CUDA GPU") || strings.Contains(err.Error(), "no CUDA driver found") {
		t.Errorf("gpucheck: %v", err)
	}
	var log strings.Builder
	be, err := openBackend("auto", 1, &log)
	if err != nil || !strings.HasPrefix(be.Name(), "cpu") {
		t.Fatalf("auto: %v, %v", be, err)
	}
	if note := log.String(); strings.Count(note, "\n") != 1 || !strings.HasPrefix(note, "dllm: running on the CPU: no visible CUDA GPU") {
		t.Errorf("auto's note %q", note)
	}
	_, err = openBackend("cuda", 1, nil)
	if err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_NO_DEVICE (100)") || strings.Contains(err.Error(), "\n") {
		t.Errorf("cuda: %v", err)
	}
}

// buildFakeDriver compiles kernels/cuda/emu/fakecuda.cc (libcuda and cuBLAS
// stand-ins on the host emulator of the kernels).
func buildFakeDriver(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	clang := os.Getenv("CLANG")
	if clang == "" {
		clang = "clang-14"
	}
	if _, err := exec.LookPath(clang); err != nil {
		t.Skipf("%s not found", clang)
	}
	fake := filepath.Join(t.TempDir(), "libfakecuda.so")
	if b, err := exec.Command(clang, "-x", "c++", "-std=c++17", "-O1", "-fPIC", "-shared", "-o", fake,
		"../../kernels/cuda/emu/fakecuda.cc", "-lm").CombinedOutput(); err != nil {
		t.Fatalf("building the fake driver: %v\n%s", err, b)
	}
	return fake
}

// buildBinary builds ./cmd/dllm with CGO_ENABLED=0, as for GPU machines.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	out := filepath.Join(t.TempDir(), "dllm")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, b)
	}
	return out
}

// The binary builds without cgo (GPU machines get it prebuilt).
func TestBuildWithoutCgo(t *testing.T) {
	bin := buildBinary(t)
	b, err := exec.Command(bin, "gpucheck", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "kernels.tsv") {
		t.Errorf("the binary: %v\n%s", err, b)
	}
}

// TestDeviceCUDAOnFakeDriver runs the CGO_ENABLED=0 binary with --device
// cuda against kernels/cuda/emu/fakecuda.cc (libcuda and cuBLAS stand-ins
// on the host emulator of the kernels): gpucheck passes, bench reports an
// MFU, and 4 conversion steps give the CPU's losses with fp32 matmuls.
func TestDeviceCUDAOnFakeDriver(t *testing.T) {
	fake := buildFakeDriver(t)
	bin := buildBinary(t)
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(append(os.Environ(), "DLLM_LIBCUDA="+fake, "DLLM_CUBLAS="+fake), env...)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	dir := t.TempDir()
	if out, err := run(nil, "gpucheck", "--small", "--out", dir, "--seed", "5"); err != nil ||
		!strings.Contains(out, "0 failed") {
		t.Fatalf("gpucheck: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernels.tsv")); err != nil || strings.Count(string(b), "\tPASS\n") < 300 {
		t.Errorf("kernels.tsv: %v (%d bytes)", err, len(b))
	}
	out, err := run(nil, "bench", "--device", "cuda", "--arch", "../../testdata/tiny/qwen2/config.json",
		"--batch", "2", "--seq-len", "16", "--steps", "1", "--warmup", "1")
	if err != nil || !strings.Contains(out, "cuda (Fake GPU") || !strings.Contains(out, "MFU") {
		t.Errorf("bench: %v\n%s", err, out)
	}
	// --bf16-copies auto weighs the plan, which counts the weights, against
	// the memory free before they are allocated: a device of the plan with
	// the copies, and some of the weights' bytes more, keeps them; one below
	// that plan drops them, saying so.
	plan := func(copies string) (total, params float64) {
		o, err := run(nil, "plan", "../../testdata/tiny/qwen2/config.json", "--bench", "--device", "cuda",
			"--batch-size", "2", "--seq-len", "16", "--bf16-copies", copies, "--json")
		var p struct {
			Total  float64 `json:"total_bytes"`
			Params float64 `json:"param_bytes"`
		}
		if err != nil || json.Unmarshal([]byte(o), &p) != nil || p.Total == 0 || p.Params == 0 {
			t.Fatalf("plan --bf16-copies %s: %v\n%s", copies, err, o)
		}
		return p.Total, p.Params
	}
	on, _ := plan("on")
	off, weights := plan("off")
	for _, c := range []struct {
		mem   float64
		drops bool
	}{{on + weights - (on-off)/2, false}, {on - (on-off)/2, true}} {
		out, err := run([]string{fmt.Sprintf("DLLM_FAKECUDA_MEM=%.0f", c.mem)}, "bench", "--device", "cuda", "--arch", "../../testdata/tiny/qwen2/config.json",
			"--batch", "2", "--seq-len", "16", "--steps", "1", "--warmup", "0")
		if drops := strings.Contains(out, "bf16 copies of the weights: off"); err != nil || drops != c.drops {
			t.Errorf("bench on %.0f bytes (the plan: %.0f with the copies, %.0f without; weights %.0f): drops the copies %v, want %v: %v\n%s",
				c.mem, on, off, weights, drops, c.drops, err, out)
		}
	}
	// The same 4 conversion steps on the CPU and on the (fake) GPU.
	var text strings.Builder
	for d := 0; d < 30; d++ {
		fmt.Fprintf(&text, "Once upon a time a little cat number %d played in the sun with a dog.\n\n", d)
	}
	data := filepath.Join(dir, "stories.txt")
	os.WriteFile(data, []byte(text.String()), 0o644)
	losses := map[string][]float64{}
	for _, dev := range []string{"cpu", "cuda"} {
		out := filepath.Join(dir, "conv-"+dev)
		if o, err := run([]string{"DLLM_CUDA_MATMUL=fp32"}, "convert", "../../testdata/tiny/llama", "--data", data, "--out", out,
			"--steps", "4", "--seq-len", "32", "--batch-size", "4", "--eval-fraction", "0.2", "--eval-rows", "4",
			"--eval-mc", "1", "--seed", "3", "--device", dev, "--quiet"); err != nil {
			t.Fatalf("convert --device %s: %v\n%s", dev, err, o)
		}
		b, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var r struct {
				Type string
				Loss float64
			}
			json.Unmarshal([]byte(line), &r)
			if r.Type == "train" {
				losses[dev] = append(losses[dev], r.Loss)
			}
		}
	}
	if len(losses["cpu"]) != 4 || len(losses["cuda"]) != 4 {
		t.Fatalf("losses %v", losses)
	}
	for i := range losses["cpu"] {
		if a, b := losses["cpu"][i], losses["cuda"][i]; math.Abs(a-b) > 1e-4*math.Abs(a) {
			t.Errorf("step %d: loss %.6f on the CPU, %.6f on the fake GPU", i+1, a, b)
		}
	}
}

// dllm logits writes L x vocab float32 logits: bidirectional by default, so
// the first position sees the last token (it does not under --mask causal).
func TestLogitsCommand(t *testing.T) {
	dir := t.TempDir()
	read := func(mask, ids string) []float32 {
		out := filepath.Join(dir, mask+ids+".f32")
		root := newRoot()
		root.SetArgs([]string{"logits", "--model", "../../testdata/tiny/llama", "--ids", ids, "--out", out, "--device", "cpu", "--mask", mask})
		var buf bytes.Buffer
		root.SetOut(&buf)
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]float32, len(b)/4)
		for i := range v {
			v[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
		}
		return v
	}
	a, b := read("bidirectional", "5,6,7,8"), read("bidirectional", "5,6,7,9")
	if len(a)%4 != 0 || len(a) < 4*100 {
		t.Fatalf("%d values", len(a))
	}
	V := len(a) / 4
	if a[0] == b[0] && a[1] == b[1] && a[V-1] == b[V-1] {
		t.Error("bidirectional: position 0 does not see the last token")
	}
	c, d := read("causal", "5,6,7,8"), read("causal", "5,6,7,9")
	for j := 0; j < V; j++ {
		if c[j] != d[j] {
			t.Fatalf("causal: position 0 sees the last token (logit %d)", j)
		}
	}
	root := newRoot()
	root.SetArgs([]string{"logits", "--model", "../../testdata/tiny/llama", "--ids", "5,x", "--out", filepath.Join(dir, "bad"), "--device", "cpu"})
	root.SetOut(&bytes.Buffer{})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "not an integer") {
		t.Errorf("bad ids: %v", err)
	}
}

func TestBenchMask(t *testing.T) {
	root := newRoot()
	root.SetArgs([]string{"bench", "--arch", "../../testdata/tiny/qwen2/config.json", "--device", "cpu", "--batch", "2",
		"--seq-len", "16", "--steps", "1", "--warmup", "0", "--mask", "annealed", "--json"})
	var buf bytes.Buffer
	root.SetOut(&buf)
	if err := root.Execute(); err != nil || !strings.Contains(buf.String(), `"mask":"annealed"`) {
		t.Errorf("%v: %s", err, buf.String())
	}
	// Refused before the weights are read: the folder need not exist.
	root = newRoot()
	root.SetArgs([]string{"bench", "--model", filepath.Join(t.TempDir(), "none"), "--device", "cpu", "--mask", "causal"})
	root.SetOut(&bytes.Buffer{})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "bidirectional or annealed") || exitCode(err) != 2 {
		t.Errorf("--mask causal: %v (exit %d), want exit 2", err, exitCode(err))
	}
}
