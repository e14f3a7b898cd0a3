package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/dllm-dev/dllm/kernels"
)

const maxGrid = 65535 * 16

// grid1 is a one-dimensional grid of 256-thread blocks for n items
// (grid-stride kernels cover the rest).
func grid1(n int) dim3 {
	g := (n + 255) / 256
	g = min(max(g, 1), maxGrid)
	return dim3{uint32(g), 1, 1}
}

var block256 = dim3{256, 1, 1}

// launch enqueues kernel k after checking its arguments' classes.
func (be *Backend) launch(k kernel, grid, block dim3, p *params) {
	if be.failed.Load() {
		return
	}
	if !p.matches(kernelInfo[k].sig) {
		be.fail(fmt.Errorf("cuda: internal error: %s launched with arguments (%s), declared (%s)", k, p.signature(), kernelInfo[k].sig))
		return
	}
	be.async(func() error { return be.drv.launch(k, grid, block, p) })
}

// Alloc returns a device buffer of n float32 from the pool.
func (be *Backend) Alloc(n int) kernels.Buf {
	if n <= 0 {
		return kernels.Buf{}
	}
	a, err := be.pool.get(uintptr(n) * 4)
	if err != nil {
		be.fail(err)
		return kernels.Buf{N: n}
	}
	return kernels.Buf{Dev: a, N: n}
}

// AllocInt returns a device buffer of n int32.
func (be *Backend) AllocInt(n int) kernels.IBuf {
	b := be.Alloc(n)
	return kernels.IBuf{Dev: b.Dev, N: b.N}
}

// Free gives a buffer back to the pool.
func (be *Backend) Free(b kernels.Buf) {
	if b.Dev != 0 && !be.closed {
		be.release(b.Dev)
	}
}

// FreeInt gives an int buffer back to the pool.
func (be *Backend) FreeInt(b kernels.IBuf) { be.Free(kernels.Buf{Dev: b.Dev, N: b.N}) }

func (be *Backend) upload(dst uintptr, src unsafe.Pointer, n int) {
	if n <= 0 || be.failed.Load() {
		return
	}
	if err := be.call(func() error { return be.drv.htod(dst, src, uintptr(n)*4) }); err != nil {
		be.fail(err)
	}
}

func (be *Backend) download(dst unsafe.Pointer, src uintptr, n int) {
	if n <= 0 || be.failed.Load() {
		return
	}
	if err := be.call(func() error { return be.drv.dtoh(dst, src, uintptr(n)*4) }); err != nil {
		be.fail(err)
	}
}

// Upload copies min(len(src), dst.N) values to the device (rounded to
// bfloat16 into a Half buffer).
func (be *Backend) Upload(dst kernels.Buf, src []float32) {
	if dst.Half {
		be.uploadHalf(dst, src)
		return
	}
	if n := min(len(src), dst.N); n > 0 {
		be.upload(dst.Dev, unsafe.Pointer(&src[0]), n)
	}
}

// Download copies min(len(dst), src.N) values from the device (widened
// from a Half buffer).
func (be *Backend) Download(dst []float32, src kernels.Buf) {
	if src.Half {
		be.downloadHalf(dst, src)
		return
	}
	if n := min(len(dst), src.N); n > 0 {
		be.download(unsafe.Pointer(&dst[0]), src.Dev, n)
	}
}

// UploadInt copies ints to the device.
func (be *Backend) UploadInt(dst kernels.IBuf, src []int32) {
	if n := min(len(src), dst.N); n > 0 {
		be.upload(dst.Dev, unsafe.Pointer(&src[0]), n)
	}
}

// DownloadInt copies ints from the device.
func (be *Backend) DownloadInt(dst []int32, src kernels.IBuf) {
	if n := min(len(dst), src.N); n > 0 {
		be.download(unsafe.Pointer(&dst[0]), src.Dev, n)
	}
}

// Zero sets b to 0.
func (be *Backend) Zero(b kernels.Buf) {
	if b.N > 0 && !be.halfOperand("Zero", b) {
		be.async(func() error { return be.drv.memset32(b.Dev, 0, uintptr(b.N)) })
	}
}

// Copy copies min(dst.N, src.N) values between device buffers; into a bf16
// buffer it rounds float32 values as Upload does.
func (be *Backend) Copy(dst, src kernels.Buf) {
	switch n := min(dst.N, src.N); {
	case n <= 0:
	case dst.Half && !src.Half:
		be.cast(kCastBF16, dst.Dev, src.Dev, n)
	case !be.halfOperand("Copy", dst, src):
		be.async(func() error { return be.drv.dtod(dst.Dev, src.Dev, uintptr(n)*4) })
	}
}

// AddBias adds bias to every row of c.
func (be *Backend) AddBias(c, bias kernels.Buf, rows, cols int) {
	if rows*cols > 0 {
		be.launch(kAddBias, grid1(rows*cols), block256, new(params).ptr(c.Dev).ptr(bias.Dev).i64(rows).i32(cols))
	}
}

// BiasBackward accumulates the column sums of dout into dbias.
func (be *Backend) BiasBackward(dbias, dout kernels.Buf, rows, cols int) {
	be.colsum(dbias.Dev, dout.Dev, 0, 0, rows, cols)
}

// colsum accumulates into dst[j] the sum over rows of a[r][j] (times
// b[r][j] and s[r] where given), in two deterministic passes.
func (be *Backend) colsum(dst, a, b, s uintptr, rows, cols int) {
	if rows <= 0 || cols <= 0 || be.failed.Load() {
		return
	}
	chunks := min(max((rows+63)/64, 1), 256)
	chunk := (rows + chunks - 1) / chunks
	chunks = (rows + chunk - 1) / chunk
	part := be.scratch(chunks * cols * 4)
	if part == 0 {
		return
	}
	be.launch(kColsumPartial, dim3{uint32((cols + 31) / 32), uint32(chunks), 1}, dim3{32, 8, 1},
		new(params).ptr(part).ptr(a).ptr(b).ptr(s).i32(rows).i32(cols).i32(chunk))
	be.launch(kColsumFinish, grid1(cols), block256, new(params).ptr(dst).ptr(part).i32(chunks).i32(cols))
	be.release(part)
}

// Embedding gathers rows of table.
func (be *Backend) Embedding(out, table kernels.Buf, ids kernels.IBuf, n, dim int) {
	if n*dim > 0 && !be.halfOperand("Embedding", out, table) {
		be.launch(kEmbedding, grid1(n*dim), block256, new(params).ptr(out.Dev).ptr(table.Dev).ptr(ids.Dev).i64(n).i32(dim))
	}
}

// EmbeddingBackward accumulates dout's rows into dtable at ids.
func (be *Backend) EmbeddingBackward(dtable, dout kernels.Buf, ids kernels.IBuf, n, dim int) {
	if n*dim > 0 {
		be.launch(kEmbeddingBwd, grid1(n*dim), block256, new(params).ptr(dtable.Dev).ptr(dout.Dev).ptr(ids.Dev).i64(n).i32(dim))
	}
}

// RMSNorm normalises rows, one warp per row.
func (be *Backend) RMSNorm(out, rstd, x, w kernels.Buf, rows, dim int, eps float32) {
	if rows > 0 && dim > 0 {
		be.launch(kRMSNorm, dim3{uint32((rows + 7) / 8), 1, 1}, block256,
			new(params).ptr(out.Dev).ptr(rstd.Dev).ptr(x.Dev).ptr(w.Dev).i32(rows).i32(dim).f32(eps))
	}
}

// RMSNormBackward accumulates into dx (one warp per row) and dw (column
// sums of dout*x*rstd).
func (be *Backend) RMSNormBackward(dx, dw, dout, x, w, rstd kernels.Buf, rows, dim int) {
	if rows <= 0 || dim <= 0 {
		return
	}
	be.launch(kRMSNormBwdDX, dim3{uint32((rows + 7) / 8), 1, 1}, block256,
		new(params).ptr(dx.Dev).ptr(dout.Dev).ptr(x.Dev).ptr(w.Dev).ptr(rstd.Dev).i32(rows).i32(dim))
	be.colsum(dw.Dev, dout.Dev, x.Dev, rstd.Dev, rows, dim)
}

// RoPE rotates x in place (inverse: back).
func (be *Backend) RoPE(x kernels.Buf, pos kernels.IBuf, cos, sin kernels.Buf, rows, heads, headDim int, inverse bool) {
	n := rows * heads * (headDim / 2)
	if n <= 0 {
		return
	}
	sign := float32(1)
	if inverse {
		sign = -1
	}
	be.launch(kRoPE, grid1(n), block256,
		new(params).ptr(x.Dev).ptr(pos.Dev).ptr(cos.Dev).ptr(sin.Dev).i32(rows).i32(heads).i32(headDim).f32(sign))
}

// SwiGLU: out = silu(g) * u.
func (be *Backend) SwiGLU(out, g, u kernels.Buf, n int) {
	if n > 0 {
		be.launch(kSwiGLU, grid1(n), block256, new(params).ptr(out.Dev).ptr(g.Dev).ptr(u.Dev).i64(n))
	}
}

// SwiGLUBackward writes dg and du.
func (be *Backend) SwiGLUBackward(dg, du, dout, g, u kernels.Buf, n int) {
	if n > 0 {
		be.launch(kSwiGLUBwd, grid1(n), block256, new(params).ptr(dg.Dev).ptr(du.Dev).ptr(dout.Dev).ptr(g.Dev).ptr(u.Dev).i64(n))
	}
}

// Add: out = a + b.
func (be *Backend) Add(out, a, b kernels.Buf, n int) {
	if n > 0 {
		be.launch(kAdd, grid1(n), block256, new(params).ptr(out.Dev).ptr(a.Dev).ptr(b.Dev).i64(n))
	}
}

// Scale multiplies x by s.
func (be *Backend) Scale(x kernels.Buf, s float32, n int) {
	if n > 0 {
		be.launch(kScale, grid1(n), block256, new(params).ptr(x.Dev).f32(s).i64(n))
	}
}

// CrossEntropy: one 512-thread block per row.
func (be *Backend) CrossEntropy(loss, correct, logits kernels.Buf, targets kernels.IBuf, weights kernels.Buf, rows, vocab int, gradScale float32, grad bool) {
	if rows <= 0 || vocab <= 0 {
		return
	}
	g := 0
	if grad {
		g = 1
	}
	be.launch(kCrossEntropy, dim3{uint32(rows), 1, 1}, dim3{512, 1, 1},
		new(params).ptr(loss.Dev).ptr(correct.Dev).ptr(logits.Dev).ptr(targets.Dev).ptr(weights.Dev).
			i32(rows).i32(vocab).f32(gradScale).i32(g))
}

// AdamWStep is kernels/cpu's update, with the same float32 constants.
func (be *Backend) AdamWStep(p, g, m, v kernels.Buf, n int, h kernels.AdamW) {
	if n <= 0 {
		return
	}
	be.launch(kAdamW, grid1(n), block256, adamwParams(p, g, m, v, n, h))
}

var _ kernels.AdamWBF16 = (*Backend)(nil)

// AdamWStepBF16 (kernels.AdamWBF16) is AdamWStep writing the bf16 copy of
// p[from:n] into p16 with cast_f32_bf16's rounding.
func (be *Backend) AdamWStepBF16(p, g, m, v kernels.Buf, n int, h kernels.AdamW, p16 kernels.Buf, from int) {
	if n <= 0 {
		return
	}
	if !p16.Half || p16.N < n-from || from < 0 {
		be.fail(errorf("AdamWStepBF16: %d values from %d into a bf16 buffer of %d", n, from, p16.N))
		return
	}
	if be.adamwTwoPass {
		be.AdamWStep(p, g, m, v, n, h)
		be.cast(kCastBF16, p16.Dev, p.Dev+uintptr(from)*4, n-from)
		return
	}
	be.launch(kAdamWBF16, grid1(n), block256, adamwParams(p, g, m, v, n, h).ptr(p16.Dev).i64(from))
}

func adamwParams(p, g, m, v kernels.Buf, n int, h kernels.AdamW) *params {
	decay := 1 - h.LR*h.WeightDecay
	step := h.LR / h.BC1
	sqrtBC2 := float32(math.Sqrt(float64(h.BC2)))
	return new(params).ptr(p.Dev).ptr(g.Dev).ptr(m.Dev).ptr(v.Dev).i64(n).
		f32(h.Beta1).f32(h.Beta2).f32(h.Eps).f32(decay).f32(step).f32(sqrtBC2).f32(h.GradScale)
}

// SumSquares returns the sum of squares of x, accumulated in float64.
func (be *Backend) SumSquares(x kernels.Buf) float64 { return be.reduce(x, 1) }

// Sum returns the sum of x in float64.
func (be *Backend) Sum(x kernels.Buf) float64 { return be.reduce(x, 0) }

func (be *Backend) reduce(x kernels.Buf, squares int) float64 {
	if be.failed.Load() {
		return math.NaN()
	}
	if x.N == 0 {
		return 0
	}
	if be.halfOperand("SumSquares", x) {
		return math.NaN()
	}
	blocks := min((x.N+255)/256, 1024)
	part, out := be.scratch(blocks*8), be.scratch(8)
	if part == 0 || out == 0 {
		return math.NaN()
	}
	defer be.release(part)
	defer be.release(out)
	be.launch(kReducePartial, dim3{uint32(blocks), 1, 1}, block256, new(params).ptr(part).ptr(x.Dev).i64(x.N).i32(squares))
	be.launch(kReduceFinish, dim3{1, 1, 1}, block256, new(params).ptr(out).ptr(part).i32(blocks))
	var s float64
	if err := be.call(func() error { return be.drv.dtoh(unsafe.Pointer(&s), out, 8) }); err != nil {
		be.fail(err)
		return math.NaN()
	}
	return s
}

// BF16RoundTrip writes to dst the values of src rounded to bfloat16 (to
// nearest, ties to even) and widened back: the cast the bf16 matmuls apply
// to their inputs, exposed for the parity checks.
func (be *Backend) BF16RoundTrip(dst, src kernels.Buf) {
	n := min(dst.N, src.N)
	if n <= 0 {
		return
	}
	s := be.scratch(n * 2)
	if s == 0 {
		return
	}
	be.cast(kCastBF16, s, src.Dev, n)
	be.cast(kCastF32, dst.Dev, s, n)
	be.release(s)
}
