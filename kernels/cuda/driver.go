package cuda

import (
	"fmt"
	"unsafe"
)

// dim3 is a grid or block shape.
type dim3 struct{ x, y, z uint32 }

// driver is what the Backend needs of a device: the CUDA driver and cuBLAS
// (driver_linux.go), or, in the tests, the host emulator of the kernels. A
// driver is used from one goroutine locked to its OS thread. Async methods
// enqueue on the driver's one stream; htod, dtoh and sync wait.
type driver interface {
	describe() string
	malloc(bytes uintptr) (uintptr, error)
	free(a uintptr) error
	htod(dst uintptr, src unsafe.Pointer, bytes uintptr) error
	dtoh(dst unsafe.Pointer, src uintptr, bytes uintptr) error
	dtod(dst, src uintptr, bytes uintptr) error         // async
	memset32(dst uintptr, v uint32, n uintptr) error    // async
	launch(k kernel, grid, block dim3, p *params) error // async
	gemm(g *gemmCall) error                             // async
	sync() error
	// record puts timing event i (0 or 1) on the stream; elapsed waits for
	// event 1 and returns the milliseconds between 0 and 1.
	record(i int) error
	elapsed() (float32, error)
	close() error
}

// Error is a failed CUDA driver or cuBLAS call.
type Error struct {
	Call string // the function, e.g. cuMemAlloc_v2
	Name string // e.g. CUDA_ERROR_OUT_OF_MEMORY
	Code int
	Info string // extra detail (a JIT log)
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s (%d)", e.Call, e.Name, e.Code)
	if e.Info != "" {
		s += ": " + e.Info
	}
	return s
}

const (
	errOutOfMemory = 2   // CUDA_ERROR_OUT_OF_MEMORY
	errNoDevice    = 100 // CUDA_ERROR_NO_DEVICE
)

// cudaErrorNames names the CUresult codes met most often, for when
// cuGetErrorName itself fails.
var cudaErrorNames = map[int]string{
	1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY", 3: "CUDA_ERROR_NOT_INITIALIZED",
	4: "CUDA_ERROR_DEINITIALIZED", 100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE",
	200: "CUDA_ERROR_INVALID_IMAGE", 201: "CUDA_ERROR_INVALID_CONTEXT", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
	218: "CUDA_ERROR_INVALID_PTX", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", 400: "CUDA_ERROR_INVALID_HANDLE",
	500: "CUDA_ERROR_NOT_FOUND", 700: "CUDA_ERROR_ILLEGAL_ADDRESS", 701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
	702: "CUDA_ERROR_LAUNCH_TIMEOUT", 719: "CUDA_ERROR_LAUNCH_FAILED", 999: "CUDA_ERROR_UNKNOWN",
}

// cublasStatusNames names cublasStatus_t.
var cublasStatusNames = map[int]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

func cublasError(call string, status uint32) error {
	if status == 0 {
		return nil
	}
	name, ok := cublasStatusNames[int(status)]
	if !ok {
		name = "CUBLAS_STATUS_UNKNOWN"
	}
	return &Error{Call: call, Name: name, Code: int(status)}
}

// cString reads a NUL-terminated C string of at most max bytes.
func cString(p *byte, max int) string {
	if p == nil {
		return ""
	}
	var b []byte
	for i := 0; i < max; i++ {
		c := *(*byte)(unsafe.Add(unsafe.Pointer(p), i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}
