package kernels

import "math/bits"

// PoolClass rounds a device allocation of n bytes up to the size
// kernels/cuda's pool allocates (and model's plan counts): multiples of
// 256 bytes up to 1 MiB, then four classes per power of two (1.25, 1.5,
// 1.75 and 2 times the power below) up to 64 MiB, so at most a quarter is
// wasted; larger blocks (the parameters, the activation arena, a 7B
// model's biggest scratch) are rounded to 2 MiB only, where a quarter
// would waste gigabytes.
func PoolClass(n uint64) uint64 {
	const small, large, grain = 1 << 20, 64 << 20, 2 << 20
	if n <= 256 {
		return 256
	}
	if n <= small {
		return (n + 255) &^ 255
	}
	if n > large {
		return (n + grain - 1) &^ (grain - 1)
	}
	e := bits.Len64(n - 1) // 2^(e-1) <= n-1 < 2^e
	step := uint64(1) << (e - 3)
	return (n + step - 1) &^ (step - 1)
}

// HeadChunkFloats is the most logits kernels/cuda's HeadLoss holds at once
// (128 MiB).
const HeadChunkFloats = 1 << 25

// HeadCols is the width of that HeadLoss's vocabulary chunks (and what the
// plan counts) for rows rows of at most maxFloats logits: a multiple of
// 128 columns (128 where fewer fit), at most vocab.
func HeadCols(rows, vocab, maxFloats int) int {
	return min(vocab, max(128, (maxFloats/rows)/128*128))
}
