//go:build amd64 && !purego

package cpu

import (
	"math"

	"golang.org/x/sys/cpu"
)

//go:noescape
func kernel12x32(k int, a, b, c *float32, ldc int, accumulate bool)

//go:noescape
func kernel6x16AVX2(k int, a, b, c *float32, ldc int, accumulate bool)

// hasAVX512 and hasAVX2 select the assembly micro-kernels; with neither the
// portable Go kernel computes the same tiles. The AVX2 kernel does each
// element's FMAs in the AVX-512 kernel's order, so the two agree bit for bit.
var (
	hasAVX512 = cpu.X86.HasAVX512F
	hasAVX2   = cpu.X86.HasAVX2 && cpu.X86.HasFMA
)

func microKernel(k int, a, b, c []float32, ldc int, accumulate bool) {
	switch {
	case hasAVX512:
		kernel12x32(k, &a[0], &b[0], &c[0], ldc, accumulate)
	case hasAVX2:
		kernel6x16AVX2(k, &a[0], &b[0], &c[0], ldc, accumulate)
		kernel6x16AVX2(k, &a[0], &b[16], &c[16], ldc, accumulate)
		kernel6x16AVX2(k, &a[6], &b[0], &c[6*ldc], ldc, accumulate)
		kernel6x16AVX2(k, &a[6], &b[16], &c[6*ldc+16], ldc, accumulate)
	default:
		kernelGo(k, a, b, c, ldc, accumulate)
	}
}

//go:noescape
func expShiftAVX512(dst, src *float32, n int, shift float32, sum *[16]float32)

//go:noescape
func expShiftAVX2(dst, src *float32, n int, shift float32, sum *[16]float32)

// expShift sets dst[i] = exp(src[i] - shift) (0 for -Inf) and returns the
// sum of dst.
func expShift(dst, src []float32, shift float32) float32 {
	n := len(src)
	dst = dst[:n]
	var lanes [16]float32
	v := 0
	if (hasAVX512 || hasAVX2) && n >= 16 {
		v = n &^ 15
		if hasAVX512 {
			expShiftAVX512(&dst[0], &src[0], v, shift, &lanes)
		} else {
			expShiftAVX2(&dst[0], &src[0], v, shift, &lanes)
		}
	}
	var s float32
	for _, l := range lanes {
		s += l
	}
	for i := v; i < n; i++ {
		dst[i] = expf(src[i] - shift)
		s += dst[i]
	}
	return s
}

//go:noescape
func scaleMaxAVX512(x *float32, n int, scale float32, mx *[16]float32)

//go:noescape
func scaleMaxAVX2(x *float32, n int, scale float32, mx *[16]float32)

// scaleMax multiplies x by scale in place and returns the largest result.
func scaleMax(x []float32, scale float32) float32 {
	n := len(x)
	mx := float32(math.Inf(-1))
	v := 0
	if (hasAVX512 || hasAVX2) && n >= 16 {
		v = n &^ 15
		lanes := [16]float32{}
		for i := range lanes {
			lanes[i] = mx
		}
		if hasAVX512 {
			scaleMaxAVX512(&x[0], v, scale, &lanes)
		} else {
			scaleMaxAVX2(&x[0], v, scale, &lanes)
		}
		for _, l := range lanes {
			if l > mx {
				mx = l
			}
		}
	}
	for i := v; i < n; i++ {
		x[i] *= scale
		if x[i] > mx {
			mx = x[i]
		}
	}
	return mx
}
