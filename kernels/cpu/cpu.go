// Package cpu is the reference Backend: every op in Go (the matmul
// micro-kernel in AVX-512 or AVX2 assembly where the CPU has it), parallel over
// goroutines. Other backends are checked against it.
package cpu

import (
	"runtime"
	"sync"

	"github.com/dllm-dev/dllm/kernels"
)

// Backend runs kernels on the host. It is not safe for concurrent use.
type Backend struct {
	threads int
	work    []workspace // per worker: GEMM packing, attention scratch
	shared  workspace   // the packed B block shared by all workers
	parts   []float64   // per-worker partial sums
	vis     visCache
	next    []int32 // MoEDispatch's cursors
}

var _ kernels.Backend = (*Backend)(nil)

// New returns a CPU backend using threads goroutines (0: one per CPU).
func New(threads int) *Backend {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	return &Backend{threads: threads, work: make([]workspace, threads), parts: make([]float64, threads)}
}

// Threads is the number of workers.
func (be *Backend) Threads() int { return be.threads }

// Name describes the backend.
func (be *Backend) Name() string {
	if hasAVX512 {
		return "cpu (avx512)"
	}
	if hasAVX2 {
		return "cpu (avx2)"
	}
	return "cpu (portable)"
}

func (be *Backend) Err() error   { return nil }
func (be *Backend) Sync() error  { return nil }
func (be *Backend) Close() error { return nil }

func (be *Backend) Alloc(n int) kernels.Buf {
	return kernels.Buf{Host: make([]float32, n), N: n}
}

func (be *Backend) AllocInt(n int) kernels.IBuf {
	return kernels.IBuf{Host: make([]int32, n), N: n}
}

func (be *Backend) Free(kernels.Buf)     {}
func (be *Backend) FreeInt(kernels.IBuf) {}

func (be *Backend) Upload(dst kernels.Buf, src []float32)     { copy(dst.Host, src) }
func (be *Backend) Download(dst []float32, src kernels.Buf)   { copy(dst, src.Host) }
func (be *Backend) UploadInt(dst kernels.IBuf, src []int32)   { copy(dst.Host, src) }
func (be *Backend) DownloadInt(dst []int32, src kernels.IBuf) { copy(dst, src.Host) }
func (be *Backend) Copy(dst, src kernels.Buf)                 { copy(dst.Host, src.Host) }

// Zero clears b; large buffers (gradients) are cleared by all workers.
func (be *Backend) Zero(b kernels.Buf) {
	h := b.Host[:b.N]
	be.parallel(len(h), 1<<18, func(lo, hi, _ int) { clear(h[lo:hi]) })
}

// parallel splits [0, n) into at most threads contiguous chunks of at least
// grain items and runs fn on each; worker ids are distinct within a call.
func (be *Backend) parallel(n, grain int, fn func(lo, hi, worker int)) {
	if n <= 0 {
		return
	}
	w := be.threads
	if grain < 1 {
		grain = 1
	}
	if max := (n + grain - 1) / grain; w > max {
		w = max
	}
	if w <= 1 {
		fn(0, n, 0)
		return
	}
	var wg sync.WaitGroup
	wg.Add(w - 1)
	for t := 1; t < w; t++ {
		lo, hi := n*t/w, n*(t+1)/w
		go func(t int) {
			defer wg.Done()
			fn(lo, hi, t)
		}(t)
	}
	fn(0, n/w, 0)
	wg.Wait()
}
