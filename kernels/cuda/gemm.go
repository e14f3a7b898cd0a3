package cuda

import "github.com/dllm-dev/dllm/kernels"

// cuBLAS enums (cublas_api.h, library_types.h).
const (
	cudaR32F         = 0
	cudaR16BF        = 14
	cublasCompute32F = 68
	cublasGemmDflt   = -1
)

// gemmCall is one cublasGemmEx on column-major matrices:
// C = op(A) op(B) + beta C, C m x n (ldc), op(A) m x k, op(B) k x n,
// A and B of type inType, C float32, fp32 accumulation.
type gemmCall struct {
	transA, transB bool
	m, n, k        int
	a              uintptr
	lda            int
	b              uintptr
	ldb            int
	c              uintptr
	ldc            int
	beta           float32
	inType         int
}

// columnMajor maps the row-major product of kernels.Backend.MatMul,
// C (m x n) = op(A) op(B), onto cuBLAS. A row-major matrix read as
// column-major is its transpose, so cuBLAS computes C^T = op(B)^T op(A)^T:
// its first operand is our B, its second our A, and m and n swap. The
// leading dimensions are the row lengths of the matrices as stored: B is
// k x n (n) or, transposed, n x k (k); A is m x k (k) or k x m (m).
func columnMajor(m, n, k int, transA, transB bool) gemmCall {
	g := gemmCall{transA: transB, transB: transA, m: n, n: m, k: k, lda: n, ldb: k, ldc: n}
	if transB {
		g.lda = k
	}
	if transA {
		g.ldb = m
	}
	return g
}

// MatMul computes C = op(A) op(B) + beta*C through cuBLAS (see
// kernels.Backend). With bf16 matmuls (the default) A and B are first cast
// to bfloat16 in pooled scratch, unless they are bf16 buffers already
// (kernels.BF16Weights); C and the accumulation stay float32.
func (be *Backend) MatMul(c, a, b kernels.Buf, m, n, k int, transA, transB bool, beta float32) {
	be.matmul(c, a, b, m, n, k, transA, transB, beta, 0, 0)
}

// matmul is MatMul with, in bf16 mode, optional bf16 copies of A and B
// made beforehand (a16, b16; 0: cast here).
func (be *Backend) matmul(c, a, b kernels.Buf, m, n, k int, transA, transB bool, beta float32, a16, b16 uintptr) {
	if be.failed.Load() || m == 0 || n == 0 {
		return
	}
	if beta != 0 && beta != 1 {
		be.fail(errorf("MatMul: beta %g (0 or 1)", beta))
		return
	}
	if c.N < m*n || a.N < m*k || b.N < k*n {
		be.fail(errorf("MatMul: %dx%dx%d product on buffers of %d, %d and %d values", m, n, k, c.N, a.N, b.N))
		return
	}
	if c.Half || (be.fp32 && (a.Half || b.Half)) {
		be.fail(errorf("MatMul: a bf16 buffer as the output or, with fp32 matmuls, as an operand"))
		return
	}
	if a.Half && a16 == 0 {
		a16 = a.Dev
	}
	if b.Half && b16 == 0 {
		b16 = b.Dev
	}
	if k == 0 {
		if beta == 0 {
			be.Zero(c.Slice(0, m*n))
		}
		return
	}
	g := columnMajor(m, n, k, transA, transB)
	g.a, g.b, g.c, g.beta, g.inType = b.Dev, a.Dev, c.Dev, beta, cudaR32F
	if !be.fp32 {
		sa, sb := b16, a16
		if sa == 0 {
			if sa = be.scratch(k * n * 2); sa == 0 {
				return
			}
			be.cast(kCastBF16, sa, b.Dev, k*n)
			defer be.release(sa)
		}
		if sb == 0 {
			if sb = be.scratch(m * k * 2); sb == 0 {
				return
			}
			be.cast(kCastBF16, sb, a.Dev, m*k)
			defer be.release(sb)
		}
		g.a, g.b, g.inType = sa, sb, cudaR16BF
	}
	be.async(func() error { return be.drv.gemm(&g) })
}

func (be *Backend) cast(k kernel, dst, src uintptr, n int) {
	be.launch(k, grid1(n), dim3{256, 1, 1}, new(params).ptr(dst).ptr(src).i64(n))
}
