package cuda

import (
	"math"
	"math/rand/v2"
	"testing"
)

// colMajorGemm is what cublasGemmEx computes (column-major, alpha 1).
func colMajorGemm(g gemmCall, A, B, C []float32) {
	for j := 0; j < g.n; j++ {
		for i := 0; i < g.m; i++ {
			var s float64
			for l := 0; l < g.k; l++ {
				var a, b float32
				if g.transA {
					a = A[l+i*g.lda]
				} else {
					a = A[i+l*g.lda]
				}
				if g.transB {
					b = B[j+l*g.ldb]
				} else {
					b = B[l+j*g.ldb]
				}
				s += float64(a) * float64(b)
			}
			c := &C[i+j*g.ldc]
			if g.beta == 0 {
				*c = float32(s)
			} else {
				*c = float32(s) + g.beta**c
			}
		}
	}
}

// TestColumnMajorMapping checks the row-major -> column-major operand swap
// against a direct row-major product, for every transpose combination.
func TestColumnMajorMapping(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		m, n, k := 1+rng.IntN(9), 1+rng.IntN(9), 1+rng.IntN(9)
		tA, tB := rng.IntN(2) == 1, rng.IntN(2) == 1
		beta := float32(rng.IntN(2))
		A, B, C := make([]float32, m*k), make([]float32, k*n), make([]float32, m*n)
		for _, x := range [][]float32{A, B, C} {
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
		}
		want := make([]float32, m*n)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				var s float64
				for l := 0; l < k; l++ {
					a := A[i*k+l] // A m x k
					if tA {
						a = A[l*m+i] // A stored k x m
					}
					b := B[l*n+j] // B k x n
					if tB {
						b = B[j*k+l] // B stored n x k
					}
					s += float64(a) * float64(b)
				}
				want[i*n+j] = float32(s) + beta*C[i*n+j]
			}
		}
		g := columnMajor(m, n, k, tA, tB)
		g.beta = beta
		if g.lda < max(1, map[bool]int{false: g.m, true: g.k}[g.transA]) ||
			g.ldb < max(1, map[bool]int{false: g.k, true: g.n}[g.transB]) || g.ldc < g.m {
			t.Fatalf("%dx%dx%d %v %v: leading dimensions %+v cuBLAS rejects", m, n, k, tA, tB, g)
		}
		// cuBLAS's A is our B and its B our A.
		colMajorGemm(g, B, A, C)
		for i := range want {
			if math.Abs(float64(C[i]-want[i])) > 1e-5*(1+math.Abs(float64(want[i]))) {
				t.Fatalf("%dx%dx%d transA %v transB %v: C[%d] = %g, want %g", m, n, k, tA, tB, i, C[i], want[i])
			}
		}
	}
}
