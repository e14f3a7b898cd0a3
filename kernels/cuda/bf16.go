package cuda

import (
	"math"
	"unsafe"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/safetensors"
)

var _ kernels.BF16Weights = (*Backend)(nil)

// AllocBF16 returns a buffer of n bfloat16 values (kernels.BF16Weights),
// or ok false with fp32 matmuls.
func (be *Backend) AllocBF16(n int) (kernels.Buf, bool) {
	if be.fp32 {
		return kernels.Buf{}, false
	}
	if n <= 0 {
		return kernels.Buf{Half: true}, true
	}
	a, err := be.pool.get(uintptr(n) * 2)
	if err != nil {
		be.fail(err)
		return kernels.Buf{N: n, Half: true}, true
	}
	return kernels.Buf{Dev: a, N: n, Half: true}, true
}

var _ kernels.BF16Cast = (*Backend)(nil)

// CastBF16 (kernels.BF16Cast) rounds src into a pooled bf16 buffer with
// the kernel MatMul casts its float32 operands with, or answers ok false
// with fp32 matmuls.
func (be *Backend) CastBF16(src kernels.Buf) (kernels.Buf, bool) {
	if be.fp32 || src.Half || src.N <= 0 {
		return kernels.Buf{}, false
	}
	h, _ := be.AllocBF16(src.N)
	if h.Dev != 0 {
		be.cast(kCastBF16, h.Dev, src.Dev, src.N)
	}
	return h, true
}

// halfChunk is how many values a bf16 upload or download converts at once.
const halfChunk = 1 << 22

func (be *Backend) uploadHalf(dst kernels.Buf, src []float32) {
	n := min(len(src), dst.N)
	h := make([]uint16, min(n, halfChunk))
	for off := 0; off < n && !be.failed.Load(); off += len(h) {
		k := min(len(h), n-off)
		for i, f := range src[off : off+k] {
			h[i] = safetensors.BF16Bits(f) // cast_f32_bf16 (src/elementwise.cu) on the host
		}
		a := dst.Dev + uintptr(off)*2
		if err := be.call(func() error { return be.drv.htod(a, unsafe.Pointer(&h[0]), uintptr(k)*2) }); err != nil {
			be.fail(err)
		}
	}
}

func (be *Backend) downloadHalf(dst []float32, src kernels.Buf) {
	n := min(len(dst), src.N)
	h := make([]uint16, min(n, halfChunk))
	for off := 0; off < n && !be.failed.Load(); off += len(h) {
		k := min(len(h), n-off)
		a := src.Dev + uintptr(off)*2
		if err := be.call(func() error { return be.drv.dtoh(unsafe.Pointer(&h[0]), a, uintptr(k)*2) }); err != nil {
			be.fail(err)
			return
		}
		for i, v := range h[:k] {
			dst[off+i] = math.Float32frombits(uint32(v) << 16)
		}
	}
}

// halfOperand fails the backend when op received a bf16 buffer it cannot
// read.
func (be *Backend) halfOperand(op string, bufs ...kernels.Buf) bool {
	for _, b := range bufs {
		if b.Half {
			be.fail(errorf("%s: a bf16 weight buffer where float32 values are needed", op))
			return true
		}
	}
	return false
}
