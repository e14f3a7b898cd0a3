//go:build !amd64 || purego

package cpu

import "math"

var hasAVX512, hasAVX2 = false, false

func microKernel(k int, a, b, c []float32, ldc int, accumulate bool) {
	kernelGo(k, a, b, c, ldc, accumulate)
}

func expShift(dst, src []float32, shift float32) float32 {
	dst = dst[:len(src)]
	var s float32
	for i, v := range src {
		dst[i] = expf(v - shift)
		s += dst[i]
	}
	return s
}

func scaleMax(x []float32, scale float32) float32 {
	mx := float32(math.Inf(-1))
	for i := range x {
		x[i] *= scale
		if x[i] > mx {
			mx = x[i]
		}
	}
	return mx
}
