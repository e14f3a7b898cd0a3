//go:build amd64 && !purego

package cpu

import "golang.org/x/sys/cpu"

//go:noescape
func kernel12x32(k int, a, b, c *float32, ldc int, accumulate bool)

// hasAVX512 selects the assembly micro-kernel; without AVX-512 the portable
// Go kernel computes the same tiles.
var hasAVX512 = cpu.X86.HasAVX512F

func microKernel(k int, a, b, c []float32, ldc int, accumulate bool) {
	if hasAVX512 {
		kernel12x32(k, &a[0], &b[0], &c[0], ldc, accumulate)
		return
	}
	kernelGo(k, a, b, c, ldc, accumulate)
}
