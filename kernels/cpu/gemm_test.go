package cpu

import (
	"fmt"
	"github.com/dllm-dev/dllm/kernels"
	"math"
	"math/rand/v2"
	"testing"
)

func naiveGemm(C, A, B []float64, m, n, k int, tA, tB bool, beta float64) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var a, b float64
				if tA {
					a = A[p*m+i]
				} else {
					a = A[i*k+p]
				}
				if tB {
					b = B[j*k+p]
				} else {
					b = B[p*n+j]
				}
				s += a * b
			}
			C[i*n+j] = s + beta*C[i*n+j]
		}
	}
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

func widen(s []float32) []float64 {
	d := make([]float64, len(s))
	for i, v := range s {
		d[i] = float64(v)
	}
	return d
}

// TestGemmShapes checks every transpose combination on shapes that hit the
// edge tiles, several k blocks and several column blocks, against float64.
func TestGemmShapes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	shapes := [][3]int{{1, 1, 1}, {12, 32, 7}, {13, 33, 5}, {50, 70, 300}, {97, 1030, 40}, {200, 64, 513}, {3, 5, 0}}
	for _, threads := range []int{1, 3} {
		be := New(threads)
		for _, s := range shapes {
			m, n, k := s[0], s[1], s[2]
			for _, tA := range []bool{false, true} {
				for _, tB := range []bool{false, true} {
					for _, beta := range []float32{0, 1} {
						name := fmt.Sprintf("t%d/%dx%dx%d/tA=%v/tB=%v/beta=%v", threads, m, n, k, tA, tB, beta)
						A, B, C := randSlice(r, m*k), randSlice(r, k*n), randSlice(r, m*n)
						want := widen(C)
						naiveGemm(want, widen(A), widen(B), m, n, k, tA, tB, float64(beta))
						be.MatMul(kernels.Buf{Host: C, N: len(C)}, kernels.Buf{Host: A, N: len(A)}, kernels.Buf{Host: B, N: len(B)}, m, n, k, tA, tB, beta)
						var num, den float64
						for i := range want {
							d := float64(C[i]) - want[i]
							num += d * d
							den += want[i] * want[i]
						}
						if rel := math.Sqrt(num / math.Max(den, 1e-30)); !(rel < 1e-6) {
							t.Errorf("%s: relative error %g", name, rel)
						}
					}
				}
			}
		}
	}
}

func benchGemm(b *testing.B, m, n, k int, tA, tB bool) {
	r := rand.New(rand.NewPCG(1, 2))
	A, B, C := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
	be := New(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.MatMul(kernels.Buf{Host: C, N: len(C)}, kernels.Buf{Host: A, N: len(A)}, kernels.Buf{Host: B, N: len(B)}, m, n, k, tA, tB, 0)
	}
	b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkGemm1024(b *testing.B) { benchGemm(b, 1024, 1024, 1024, false, false) }

// BenchmarkGemmShapes covers the products of a training step of the 42M
// llama of EXPERIMENTS.md (d512, ffn 1376, vocab 32000) at 2048 tokens.
func BenchmarkGemmShapes(b *testing.B) {
	for _, s := range []struct {
		name    string
		m, n, k int
		tA, tB  bool
	}{
		{"qkvo_fwd_NT", 2048, 512, 512, false, true},
		{"ffn_up_fwd_NT", 2048, 1376, 512, false, true},
		{"ffn_down_fwd_NT", 2048, 512, 1376, false, true},
		{"ffn_dX_NN", 2048, 512, 1376, false, false},
		{"ffn_dW_TN", 1376, 512, 2048, true, false},
		{"lm_head_NT", 1024, 32000, 512, false, true},
	} {
		b.Run(s.name, func(b *testing.B) { benchGemm(b, s.m, s.n, s.k, s.tA, s.tB) })
	}
}
