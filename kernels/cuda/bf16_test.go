//go:build linux

package cuda

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dllm-dev/dllm/kernels"
)

// TestBF16Weights: a bf16 weight buffer holds what the per-product cast
// makes (Upload rounds as cast_f32_bf16 does, NaN and ties included), and
// MatMul and HeadLoss reading it give bit for bit what they give casting a
// float32 copy (and HeadLoss casting each chunk's gradient once for its two
// products what it gives casting it per product); fp32 matmuls refuse the
// buffers.
func TestBF16Weights(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: the emulator runs one fiber per CUDA thread")
	}
	be := newEmuBackend(t, "bf16")
	rng := rand.New(rand.NewPCG(1, 2))
	vals := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	up := func(v []float32) kernels.Buf { b := be.Alloc(len(v)); be.Upload(b, v); return b }
	down := func(b kernels.Buf) []float32 { v := make([]float32, b.N); be.Download(v, b); return v }
	same := func(what string, a, b []float32) {
		t.Helper()
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				t.Fatalf("%s: value %d is %g, %g expected", what, i, a[i], b[i])
			}
		}
	}

	// Rounding: random values, ties (odd and even), NaN, infinities, the
	// largest floats (which round to infinity), and a slice at an offset.
	w := vals(1000)
	w[0], w[1], w[2] = math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), float32(math.NaN())
	w[3], w[4] = float32(math.Inf(-1)), math.MaxFloat32
	h, ok := be.AllocBF16(len(w))
	if !ok {
		t.Fatal("AllocBF16 refused with bf16 matmuls")
	}
	be.Upload(h, w)
	ref := be.Alloc(len(w))
	be.BF16RoundTrip(ref, up(w))
	same("Download of a bf16 buffer", down(h), down(ref))
	part := make([]float32, 10)
	be.Download(part, h.Slice(500, 10))
	same("a slice", part, down(ref)[500:510])

	// MatMul: the weight as B (x W^T, dout W) and as A.
	const m, n, k = 7, 33, 40
	x, wv := vals(m*k), vals(n*k)
	wf := up(wv)
	w16, _ := be.AllocBF16(n * k)
	be.Upload(w16, wv)
	for _, tc := range []struct {
		name           string
		transA, transB bool
		a, b, a16, b16 kernels.Buf
		m, n, k        int
		x              []float32
	}{
		{"x W^T", false, true, kernels.Buf{}, wf, kernels.Buf{}, w16, m, n, k, x},
		{"dout W", false, false, kernels.Buf{}, wf, kernels.Buf{}, w16, m, k, n, vals(m * n)},
		{"W^T dout", true, false, wf, kernels.Buf{}, w16, kernels.Buf{}, k, m, n, vals(n * m)},
	} {
		other := up(tc.x)
		a, b, a16, b16 := tc.a, tc.b, tc.a16, tc.b16
		if a.N == 0 {
			a, a16 = other, other
		} else {
			b, b16 = other, other
		}
		c1, c2 := be.Alloc(tc.m*tc.n), be.Alloc(tc.m*tc.n)
		be.MatMul(c1, a, b, tc.m, tc.n, tc.k, tc.transA, tc.transB, 0)
		be.MatMul(c2, a16, b16, tc.m, tc.n, tc.k, tc.transA, tc.transB, 0)
		same("MatMul "+tc.name, down(c2), down(c1))
	}

	// HeadLoss with W (vocab x hidden) held in bf16, several chunks.
	const rows, hidden, vocab = 6, 40, 300
	be.headChunk = 6 * 128
	hx, hw := up(vals(rows*hidden)), vals(vocab*hidden)
	hwf := up(hw)
	hw16, _ := be.AllocBF16(vocab * hidden)
	be.Upload(hw16, hw)
	tg := be.AllocInt(rows)
	be.UploadInt(tg, []int32{3, 299, -1, 150, 7, 128})
	wt := up([]float32{1, 1, 1, 0.5, 2, 1})
	run := func(W kernels.Buf, perProduct bool) []float32 {
		be.headGradPerProduct = perProduct
		defer func() { be.headGradPerProduct = false }()
		loss, corr, dx, dW := be.Alloc(rows), be.Alloc(rows), be.Alloc(rows*hidden), be.Alloc(vocab*hidden)
		be.Zero(dW)
		be.HeadLoss(loss, corr, dx, dW, hx, W, tg, wt, rows, hidden, vocab, 0.25, true)
		return append(append(append(down(loss), down(corr)...), down(dx)...), down(dW)...)
	}
	ref16 := run(hw16, true)
	same("HeadLoss", ref16, run(hwf, true))
	// Each chunk's gradient cast once for dx and dW, or per product.
	same("HeadLoss, the gradient cast once (bf16 W)", run(hw16, false), ref16)
	same("HeadLoss, the gradient cast once (fp32 W)", run(hwf, false), ref16)
	if err := be.Err(); err != nil {
		t.Fatal(err)
	}

	// A bf16 buffer where float32 is needed fails the backend.
	be.Copy(be.Alloc(4), h)
	if be.Err() == nil {
		t.Error("Copy out of a bf16 buffer did not fail")
	}
	if _, ok := newEmuBackend(t, "fp32").AllocBF16(8); ok {
		t.Error("AllocBF16 with fp32 matmuls")
	}
}
