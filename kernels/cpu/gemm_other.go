//go:build !amd64 || purego

package cpu

var hasAVX512 = false

func microKernel(k int, a, b, c []float32, ldc int, accumulate bool) {
	kernelGo(k, a, b, c, ldc, accumulate)
}
