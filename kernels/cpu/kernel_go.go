package cpu

// kernelGo is the portable micro-kernel: C[mr x nr] (+)= A B over packed
// panels, the same contract as the assembly one.
func kernelGo(k int, a, b, c []float32, ldc int, accumulate bool) {
	var acc [mr * nr]float32
	for p := 0; p < k; p++ {
		bp := b[p*nr : p*nr+nr : p*nr+nr]
		ap := a[p*mr : p*mr+mr : p*mr+mr]
		for r := 0; r < mr; r++ {
			av := ap[r]
			row := acc[r*nr : r*nr+nr : r*nr+nr]
			for j := range row {
				row[j] += av * bp[j]
			}
		}
	}
	for r := 0; r < mr; r++ {
		dst := c[r*ldc : r*ldc+nr]
		src := acc[r*nr : r*nr+nr]
		if accumulate {
			for j := range dst {
				dst[j] += src[j]
			}
		} else {
			copy(dst, src)
		}
	}
}
