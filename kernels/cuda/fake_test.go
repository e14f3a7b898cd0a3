//go:build linux

package cuda

import (
	"errors"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/kernels/kernelcheck"
)

// TestFakeDriver runs the real driver code (driver_linux.go) against
// emu/fakecuda.cc, a libcuda.so.1 and libcublas stand-in built on the host
// emulator: New, the PTX modules, every kernel lookup and launch through
// cuLaunchKernel, cublasGemmEx with both precisions, events, Close.
func TestFakeDriver(t *testing.T) {
	path := buildLib(t, "fakecuda.cc")
	be, err := New(Options{Driver: path, Cublas: path, Matmul: "fp32"})
	if err != nil {
		t.Fatal(err)
	}
	if n := be.Name(); !strings.Contains(n, "Fake GPU") || !strings.Contains(n, "sm_90") || !strings.Contains(n, "cuBLAS 13.1.0") {
		t.Errorf("Name() = %q", n)
	}
	free, total, err := be.MemInfo()
	if err != nil || total != 1<<34 || free > total || free < total-1<<30 {
		t.Errorf("MemInfo: free %d, total %d, %v", free, total, err)
	}
	buf := be.Alloc(1 << 24)
	if f2, _, _ := be.MemInfo(); f2 > free-1<<24 {
		t.Errorf("MemInfo: %d free before a 16 MiB allocation, %d after", free, f2)
	}
	be.Free(buf)
	ms, err := be.Time(func() {})
	if err != nil || ms != 1.5 {
		t.Errorf("Time: %v %v", ms, err)
	}
	for _, mm := range []string{"fp32", "bf16"} {
		if err := be.SetMatmul(mm); err != nil {
			t.Fatal(err)
		}
		only := "^(Upload/Copy/Zero|MatMul|Attention|CrossEntropy|HeadLoss|RMSNorm|Sum|BF16)$"
		cases, err := kernelcheck.Run(cpu.New(2), be, kernelcheck.Config{Small: true, Seed: 11, Matmul: mm, Only: only}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			if !c.Pass {
				t.Errorf("%s: %s %s: %.3g > %g", mm, c.Op, c.Shape, c.RelErr, c.Threshold)
			}
		}
		if len(cases) < 50 {
			t.Errorf("%s: %d cases", mm, len(cases))
		}
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	if err := be.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Driver errors come back as one line naming the call; the first one
// sticks and later ops are skipped.
func TestFakeDriverErrors(t *testing.T) {
	path := buildLib(t, "fakecuda.cc")
	if _, err := New(Options{Driver: path, Cublas: path, Device: 3}); err == nil || !strings.Contains(err.Error(), "no CUDA device 3") {
		t.Errorf("device 3: %v", err)
	}
	if _, err := New(Options{Driver: path, Cublas: "/nonexistent/libcublas.so.13"}); err == nil ||
		!strings.HasPrefix(err.Error(), "cuBLAS not found") || !strings.Contains(err.Error(), "DLLM_CUBLAS") {
		t.Errorf("no cuBLAS: %v", err)
	}
	be, err := New(Options{Driver: path, Cublas: path})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	huge := be.Alloc(1 << 33) // 32 GiB: over the fake device's 16
	if err := be.Err(); err == nil || err.Error() != "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)" {
		t.Errorf("Alloc: %v", err)
	}
	be.Zero(huge)
	if err := be.Sync(); err == nil || !strings.Contains(err.Error(), "OUT_OF_MEMORY") {
		t.Errorf("the first error does not stick: %v", err)
	}
}

// A driver library with no visible GPU (cuInit: CUDA_ERROR_NO_DEVICE, as in
// a container started without one) is its own one-line error, not "no CUDA
// driver found".
func TestFakeDriverNoDevice(t *testing.T) {
	path := buildLib(t, "fakecuda.cc")
	t.Setenv("DLLM_FAKECUDA_NO_DEVICE", "1")
	_, err := New(Options{Driver: path, Cublas: path})
	if !errors.Is(err, ErrNoDevice) {
		t.Fatalf("err = %v", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "no visible CUDA GPU: ") || !strings.Contains(msg, "cuInit says CUDA_ERROR_NO_DEVICE (100)") ||
		!strings.Contains(msg, "CUDA_VISIBLE_DEVICES") || strings.Contains(msg, "no CUDA driver found") || strings.Contains(msg, "\n") {
		t.Errorf("message %q", msg)
	}
}
