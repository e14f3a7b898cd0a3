// Package cuda is the kernels.Backend for NVIDIA GPUs. It needs no CUDA SDK
// at build time: libcuda.so.1 and cuBLAS are opened at run time through
// purego, so the binary builds with CGO_ENABLED=0 and still runs where
// there is no GPU. The kernels are CUDA C in src/, compiled to PTX (sm_80,
// PTX ISA 7.0) by clang-14 and embedded; the driver JIT-compiles them for
// the device at start-up. Matrix products go through cuBLAS.
//
// Every CUDA call runs on one goroutine locked to its OS thread, on which
// the device's primary context is current. Ops are closures sent to it over
// a channel: launches, copies between device buffers and matrix products
// are asynchronous (stream order keeps them right), uploads, downloads,
// allocations and reductions that return a value wait for it.
package cuda

//go:generate go run ./gen

import (
	"embed"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/dllm-dev/dllm/kernels"
)

//go:embed ptx/*.ptx
var ptxFS embed.FS

// Options configure New.
type Options struct {
	// Device is the CUDA device ordinal.
	Device int
	// Matmul is the precision of matrix products: "bf16" (the default:
	// bfloat16 inputs, float32 accumulation and output) or "fp32" (float32
	// throughout, no TF32), for comparing loss curves with the CPU tightly.
	Matmul string
	// Driver is the path of libcuda.so.1 (default: $DLLM_LIBCUDA, then the
	// dynamic loader's search, then the usual driver folders).
	Driver string
	// Cublas is the path of libcublas (default: $DLLM_CUBLAS, then
	// libcublas.so.13, libcublas.so.12, the CUDA install and Python's
	// nvidia-cublas package).
	Cublas string
}

// Backend runs the kernels on one GPU. Like kernels/cpu it is not safe for
// concurrent use.
type Backend struct {
	drv    driver
	name   string
	fp32   bool
	work   chan func()
	reply  chan error
	failed atomic.Bool
	closed bool
	mu     sync.Mutex
	err    error
	pool   *pool
	// headChunk overrides kernels.HeadChunkFloats (tests: several chunks
	// on small shapes).
	headChunk int
	// headGradPerProduct: HeadLoss casts each chunk's gradient for each of
	// its two products (tests: the path it shares one cast with).
	headGradPerProduct bool
	// adamwTwoPass: AdamWStepBF16 runs adamw, then cast_f32_bf16 over the
	// values (tests: the passes it fuses).
	adamwTwoPass bool
}

var _ kernels.Backend = (*Backend)(nil)

// ErrNoDevice is the error of New (errors.Is) on a machine whose CUDA
// driver loads but sees no GPU, as in a container started without one.
var ErrNoDevice = errors.New("no visible CUDA GPU")

// New opens device opts.Device. Without a driver it fails with "no CUDA
// driver found (libcuda.so.1 could not be loaded: ...)"; with a driver but
// no visible GPU, with ErrNoDevice.
func New(opts Options) (*Backend, error) {
	fp32, err := parseMatmul(opts.Matmul)
	if err != nil {
		return nil, err
	}
	if opts.Driver == "" {
		opts.Driver = os.Getenv("DLLM_LIBCUDA")
	}
	lib, err := openLibcuda(opts.Driver)
	if err != nil {
		return nil, fmt.Errorf("no CUDA driver found (libcuda.so.1 could not be loaded: %v)", err)
	}
	cublasPath := opts.Cublas
	if cublasPath == "" {
		cublasPath = os.Getenv("DLLM_CUBLAS")
	}
	be, err := newBackend(fp32, func() (driver, error) { return openDevice(lib, opts.Device, cublasPath) })
	var e *Error
	if errors.As(err, &e) && e.Code == errNoDevice {
		return nil, fmt.Errorf("%w: the CUDA driver %s loads but %s says %s (%d); "+
			"check CUDA_VISIBLE_DEVICES and that the container was given the GPU", ErrNoDevice, lib.path, e.Call, e.Name, e.Code)
	}
	return be, err
}

func parseMatmul(s string) (fp32 bool, err error) {
	switch s {
	case "", "bf16":
		return false, nil
	case "fp32":
		return true, nil
	}
	return false, fmt.Errorf("unknown matmul precision %q: use bf16 or fp32", s)
}

// newBackend starts the device goroutine and opens the driver on it.
func newBackend(fp32 bool, open func() (driver, error)) (*Backend, error) {
	be := &Backend{fp32: fp32, work: make(chan func(), 1024), reply: make(chan error, 1)}
	ready := make(chan error, 1)
	go be.serve(open, ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	be.name = be.drv.describe()
	be.pool = newPool(be.deviceAlloc, be.deviceFree)
	return be, nil
}

// serve runs every CUDA call on one OS thread. It never unlocks the
// thread: when it returns the thread ends with it.
func (be *Backend) serve(open func() (driver, error), ready chan<- error) {
	runtime.LockOSThread()
	d, err := open()
	if err != nil {
		ready <- err
		return
	}
	be.drv = d
	ready <- nil
	for f := range be.work {
		f()
	}
}

// async enqueues f; its error becomes the backend's sticky error.
func (be *Backend) async(f func() error) {
	if be.failed.Load() {
		return
	}
	be.work <- func() {
		if be.failed.Load() {
			return
		}
		if err := f(); err != nil {
			be.fail(err)
		}
	}
}

// call runs f on the device thread after everything enqueued before it and
// returns its error (or the sticky error, f not run).
func (be *Backend) call(f func() error) error {
	if be.closed {
		return errClosed
	}
	if be.failed.Load() {
		return be.stickyErr()
	}
	be.work <- func() {
		if be.failed.Load() {
			be.reply <- be.stickyErr()
			return
		}
		be.reply <- f()
	}
	return <-be.reply
}

func (be *Backend) fail(err error) {
	be.mu.Lock()
	if be.err == nil {
		be.err = err
	}
	be.mu.Unlock()
	be.failed.Store(true)
}

func (be *Backend) stickyErr() error {
	be.mu.Lock()
	defer be.mu.Unlock()
	return be.err
}

var errClosed = errorf("the backend is closed")

func errorf(format string, args ...any) error { return fmt.Errorf("cuda: "+format, args...) }

func (be *Backend) deviceAlloc(n uintptr) (uintptr, error) {
	var a uintptr
	err := be.call(func() (err error) {
		a, err = be.drv.malloc(n)
		return err
	})
	return a, err
}

func (be *Backend) deviceFree(a uintptr) error {
	return be.call(func() error { return be.drv.free(a) })
}

// Name describes the device and the matmul precision.
func (be *Backend) Name() string {
	p := "bf16"
	if be.fp32 {
		p = "fp32"
	}
	return fmt.Sprintf("cuda (%s, %s matmuls)", be.name, p)
}

// Err reports the first error of any op so far (after the ops enqueued
// before it have run).
func (be *Backend) Err() error {
	if be.closed || be.failed.Load() {
		return be.stickyErr()
	}
	if err := be.call(func() error { return nil }); err != nil {
		be.fail(err)
	}
	return be.stickyErr()
}

// Sync waits for the device to finish every op enqueued so far.
func (be *Backend) Sync() error {
	if be.closed || be.failed.Load() {
		return be.stickyErr()
	}
	if err := be.call(func() error { return be.drv.sync() }); err != nil {
		be.fail(err)
	}
	return be.stickyErr()
}

// Close waits for the device, then releases the context and the libraries'
// handles. The backend is unusable afterwards.
func (be *Backend) Close() error {
	if be.closed {
		return nil
	}
	done := make(chan error, 1)
	be.work <- func() {
		serr := be.drv.sync()
		if cerr := be.drv.close(); serr == nil {
			serr = cerr
		}
		done <- serr
	}
	err := <-done
	be.closed = true
	be.failed.Store(true)
	close(be.work)
	if err != nil {
		return err
	}
	return be.stickyErr()
}

// SetMatmul switches the precision of matrix products: "bf16" or "fp32".
func (be *Backend) SetMatmul(precision string) error {
	fp32, err := parseMatmul(precision)
	if err == nil {
		be.fp32 = fp32
	}
	return err
}

// MatmulPrecision is "bf16" or "fp32" (SetMatmul).
func (be *Backend) MatmulPrecision() string {
	if be.fp32 {
		return "fp32"
	}
	return "bf16"
}

// MemStats reports the device memory pool.
func (be *Backend) MemStats() MemStats { return be.pool.stats() }

// PoolCached is the bytes of the freed blocks the pool keeps for reuse
// (MemStats' Reserved less InUse), which it gives back to the device when an
// allocation would fail: free memory that MemInfo counts as used.
func (be *Backend) PoolCached() uint64 {
	s := be.pool.stats()
	return uint64(s.Reserved - s.InUse)
}

// MemInfo is the device's free and total memory (cuMemGetInfo); the pool's
// cached blocks count as used (PoolCached).
func (be *Backend) MemInfo() (free, total uint64, err error) {
	mi, ok := be.drv.(interface {
		memInfo() (uint64, uint64, error)
	})
	if !ok {
		return 0, 0, errorf("MemInfo: the %s driver does not report memory", be.name)
	}
	err = be.call(func() error {
		var e error
		free, total, e = mi.memInfo()
		return e
	})
	return free, total, err
}

// Time returns the device time, in milliseconds, of the ops fn enqueues,
// measured with CUDA events on the backend's stream.
func (be *Backend) Time(fn func()) (float64, error) {
	be.async(func() error { return be.drv.record(0) })
	fn()
	be.async(func() error { return be.drv.record(1) })
	var ms float32
	err := be.call(func() (err error) {
		ms, err = be.drv.elapsed()
		return err
	})
	if err != nil {
		be.fail(err)
		return 0, err
	}
	return float64(ms), nil
}

// scratch returns a pooled block of n bytes (0 after an error).
func (be *Backend) scratch(n int) uintptr {
	a, err := be.pool.get(uintptr(max(n, 1)))
	if err != nil {
		be.fail(err)
		return 0
	}
	return a
}

// release returns scratch to the pool; work already enqueued that reads it
// runs before any later op that reuses it (one stream).
func (be *Backend) release(a uintptr) {
	if a == 0 {
		return
	}
	if err := be.pool.put(a); err != nil {
		be.fail(err)
	}
}
