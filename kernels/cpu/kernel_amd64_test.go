//go:build amd64 && !purego

package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
)

// fma32 is a float32 fused multiply-add. The float64 FMA rounds twice, which
// differs from one rounding only in ties far rarer than this test's inputs hit.
func fma32(a, b, c float32) float32 {
	return float32(math.FMA(float64(a), float64(b), float64(c)))
}

// TestMicroKernelFMAOrder holds the assembly kernel of this CPU to the
// AVX-512 kernel's arithmetic: per element, FMAs in k order from zero, then
// one add to C. So AVX2 and AVX-512 machines train bit-identically.
func TestMicroKernelFMAOrder(t *testing.T) {
	if !hasAVX512 && !hasAVX2 {
		t.Skip("no AVX2/AVX-512 on this CPU: the portable kernel is tested by the shape tests")
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, k := range []int{0, 1, 7, 256} {
		a, b := randSlice(r, k*mr+mr), randSlice(r, k*nr+nr)
		ldc := nr + 5
		for _, acc := range []bool{false, true} {
			c := randSlice(r, mr*ldc)
			want := append([]float32(nil), c...)
			for i := 0; i < mr; i++ {
				for j := 0; j < nr; j++ {
					var s float32
					for p := 0; p < k; p++ {
						s = fma32(a[p*mr+i], b[p*nr+j], s)
					}
					if acc {
						want[i*ldc+j] = s + want[i*ldc+j]
					} else {
						want[i*ldc+j] = s
					}
				}
			}
			microKernel(k, a, b, c, ldc, acc)
			for i := range c {
				if math.Float32bits(c[i]) != math.Float32bits(want[i]) {
					t.Fatalf("k=%d accumulate=%v: element %d (row %d col %d) = %v, FMA order gives %v", k, acc, i, i/ldc, i%ldc, c[i], want[i])
				}
			}
		}
	}
}

// TestExpShiftLaneSums checks the vector exp sums in 16 lanes, lane l taking
// elements 16j+l in order, whatever the vector width.
func TestExpShiftLaneSums(t *testing.T) {
	src := make([]float32, 16*37+5)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range src {
		src[i] = float32(r.NormFloat64() * 4)
	}
	dst := make([]float32, len(src))
	got := expShift(dst, src, 0.75)
	var lanes [16]float32
	v := 0
	if hasAVX512 || hasAVX2 {
		v = len(src) &^ 15
		for i := 0; i < v; i++ {
			lanes[i%16] += dst[i]
		}
	}
	var want float32
	for _, l := range lanes {
		want += l
	}
	for i := v; i < len(src); i++ {
		want += dst[i]
	}
	if math.Float32bits(got) != math.Float32bits(want) {
		t.Fatalf("sum %v, 16-lane order gives %v", got, want)
	}
	mx := scaleMax(dst, 1.5)
	var wantMax float32 = float32(math.Inf(-1))
	for _, x := range dst {
		wantMax = max(wantMax, x)
	}
	if mx != wantMax {
		t.Fatalf("scaleMax %v, want %v", mx, wantMax)
	}
}
