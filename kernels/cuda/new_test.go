package cuda

import (
	"errors"
	"strings"
	"testing"
)

func TestNewWithoutDriver(t *testing.T) {
	_, err := New(Options{Driver: "/nonexistent/libcuda.so.1"})
	if err == nil || !strings.HasPrefix(err.Error(), "no CUDA driver found (libcuda.so.1 could not be loaded: ") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("not one line: %q", err)
	}
}

func TestNewDefaultSearch(t *testing.T) {
	be, err := New(Options{})
	if err == nil {
		be.Close()
		t.Skip("this machine has a CUDA driver and device")
	}
	if strings.HasPrefix(err.Error(), "no CUDA driver found") || errors.Is(err, ErrNoDevice) {
		return
	}
	t.Logf("a driver was found but the device did not open: %v", err)
}

func TestNewRejectsPrecision(t *testing.T) {
	if _, err := New(Options{Matmul: "tf32"}); err == nil || !strings.Contains(err.Error(), "bf16 or fp32") {
		t.Fatalf("err = %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	e := &Error{Call: "cuMemAlloc_v2", Name: "CUDA_ERROR_OUT_OF_MEMORY", Code: 2}
	if e.Error() != "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)" {
		t.Errorf("%q", e.Error())
	}
	if !isOutOfMemory(e) {
		t.Error("isOutOfMemory")
	}
	if err := cublasError("cublasGemmEx", 7); err.Error() != "cublasGemmEx: CUBLAS_STATUS_INVALID_VALUE (7)" {
		t.Errorf("%q", err)
	}
}
