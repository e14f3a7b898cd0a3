package kernelcheck

import (
	"fmt"
	"math"

	"github.com/dllm-dev/dllm/kernels"
)

func checkMemory(h *harness) {
	for _, n := range h.sized([]int{1, 7, 1000}, []int{1 << 22}) {
		shape := fmt.Sprint(n)
		r, d := h.pair(h.randn(n, 1))
		h.compare("Upload/Download", shape, TolExact, r, d)
		// Copy into an odd offset of a poisoned buffer, then Zero a slice.
		r2, d2 := h.pair(nans(n + 3))
		h.ref.Copy(r2.Slice(3, n), r)
		h.dut.Copy(d2.Slice(3, n), d)
		h.ref.Zero(r2.Slice(0, 3))
		h.dut.Zero(d2.Slice(0, 3))
		h.compare("Copy+Zero slices", shape, TolExact, r2, d2)
		ri, di := h.pairInt([]int32{int32(n), -1, 1 << 30})
		got := make([]int32, 3)
		h.dut.DownloadInt(got, di)
		ok := float64(0)
		if got[0] != int32(n) || got[1] != -1 || got[2] != 1<<30 {
			ok = math.NaN()
		}
		_ = ri
		h.record("UploadInt/DownloadInt", "3", TolExact, ok)
		h.done()
	}
}

func checkMatMul(h *harness) {
	type mm struct{ m, n, k int }
	shapes := []mm{{1, 1, 1}, {3, 5, 7}, {17, 33, 9}, {64, 48, 40}}
	if !h.cfg.Small {
		shapes = append(shapes, mm{128, 896, 896}, mm{2048, 4864, 896}, mm{333, 1000, 257})
	}
	thr := TolMatmulFP32
	if h.cfg.Matmul == "bf16" {
		thr = TolMatmulBF16
	}
	run := func(s mm, tA, tB bool, beta float32) {
		r, d := h.pair(h.randn(s.m*s.k, 1))
		rb, db := h.pair(h.randn(s.k*s.n, 1))
		init := nans(s.m * s.n)
		if beta == 1 {
			init = h.randn(s.m*s.n, 1)
		}
		rc, dc := h.pair(init)
		h.ref.MatMul(rc, r, rb, s.m, s.n, s.k, tA, tB, beta)
		h.dut.MatMul(dc, d, db, s.m, s.n, s.k, tA, tB, beta)
		name, shape := fmt.Sprintf("MatMul %s beta%g", trans(tA, tB), beta), fmt.Sprintf("%dx%dx%d", s.m, s.n, s.k)
		if beta == 0 {
			h.compare(name, shape, thr, rc, dc)
		} else {
			// Compare the product, not the sum: C's random start can cancel it.
			rv, dv := h.fetch(rc, dc)
			for i, c := range init {
				rv[i] -= c
				dv[i] -= c
			}
			h.record(name, shape, thr, RelErr(rv, dv))
		}
		h.done()
	}
	for _, s := range shapes {
		for _, tA := range []bool{false, true} {
			for _, tB := range []bool{false, true} {
				for _, beta := range []float32{0, 1} {
					if !h.cfg.Small && s.m*s.n > 1<<20 && (beta == 1 || tA == tB) {
						continue // the big shapes once per orientation of the engine
					}
					run(s, tA, tB, beta)
				}
			}
		}
	}
	if !h.cfg.Small {
		// The LM head at vocabulary 151936: forward (NT), dX (NN, k =
		// 151936) and dW (TN).
		run(mm{512, 151936, 896}, false, true, 0)
		run(mm{512, 896, 151936}, false, false, 0)
		run(mm{151936, 896, 512}, true, false, 1)
	}
}

func trans(tA, tB bool) string {
	s := [2]byte{'N', 'N'}
	if tA {
		s[0] = 'T'
	}
	if tB {
		s[1] = 'T'
	}
	return string(s[:])
}

func checkBias(h *harness) {
	type rc struct{ rows, cols int }
	shapes := []rc{{1, 1}, {7, 13}, {100, 37}}
	if !h.cfg.Small {
		shapes = append(shapes, rc{2048, 896}, rc{2048, 128})
	}
	for _, s := range shapes {
		shape := fmt.Sprintf("%dx%d", s.rows, s.cols)
		r, d := h.pair(h.randn(s.rows*s.cols, 1))
		rb, db := h.pair(h.randn(s.cols, 1))
		h.ref.AddBias(r, rb, s.rows, s.cols)
		h.dut.AddBias(d, db, s.rows, s.cols)
		h.compare("AddBias", shape, TolFP32, r, d)
		rg, dg := h.pair(h.randn(s.cols, 1))
		h.ref.BiasBackward(rg, r, s.rows, s.cols)
		h.dut.BiasBackward(dg, d, s.rows, s.cols)
		h.compare("BiasBackward (+=)", shape, TolFP32, rg, dg)
		h.done()
	}
}

func checkEmbedding(h *harness) {
	type emb struct{ vocab, dim, n int }
	shapes := []emb{{11, 5, 17}, {300, 64, 100}}
	if !h.cfg.Small {
		shapes = append(shapes, emb{151936, 896, 2048}, emb{151936, 64, 4096})
	}
	for _, s := range shapes {
		shape := fmt.Sprintf("vocab %d dim %d n %d", s.vocab, s.dim, s.n)
		ids := make([]int32, s.n)
		for i := range ids {
			if i%3 == 0 {
				ids[i] = int32(h.rng.IntN(min(s.vocab, 8))) // repeats
			} else {
				ids[i] = int32(h.rng.IntN(s.vocab))
			}
		}
		ri, di := h.pairInt(ids)
		rt, dt := h.pair(h.randn(s.vocab*s.dim, 1))
		ro, do := h.pair(nans(s.n * s.dim))
		h.ref.Embedding(ro, rt, ri, s.n, s.dim)
		h.dut.Embedding(do, dt, di, s.n, s.dim)
		h.compare("Embedding", shape, TolExact, ro, do)
		rg, dg := h.pair(h.randn(s.n*s.dim, 1))
		h.ref.EmbeddingBackward(rt, rg, ri, s.n, s.dim)
		h.dut.EmbeddingBackward(dt, dg, di, s.n, s.dim)
		h.compare("EmbeddingBackward (+=)", shape, TolFP32, rt, dt)
		h.done()
	}
}

func checkRMSNorm(h *harness) {
	type rd struct{ rows, dim int }
	shapes := []rd{{1, 1}, {3, 7}, {37, 100}, {64, 64}}
	if !h.cfg.Small {
		shapes = append(shapes, rd{2048, 896}, rd{28672, 64}, rd{512, 4096})
	}
	for _, s := range shapes {
		shape := fmt.Sprintf("%dx%d", s.rows, s.dim)
		n := s.rows * s.dim
		w := h.randn(s.dim, 0.1)
		for i := range w {
			w[i]++
		}
		rx, dx := h.pair(h.randn(n, 1))
		rw, dw := h.pair(w)
		ro, do := h.pair(nans(n))
		rs, ds := h.pair(nans(s.rows))
		h.ref.RMSNorm(ro, rs, rx, rw, s.rows, s.dim, 1e-6)
		h.dut.RMSNorm(do, ds, dx, dw, s.rows, s.dim, 1e-6)
		h.compare("RMSNorm", shape, TolFP32, ro, do)
		h.compare("RMSNorm rstd", shape, TolFP32, rs, ds)
		// Backward from the reference's rstd, into random dx and dw.
		rstd := make([]float32, s.rows)
		h.ref.Download(rstd, rs)
		rr, dr := h.pair(rstd)
		rg, dg := h.pair(h.randn(n, 1))
		rdx, ddx := h.pair(h.randn(n, 1))
		rdw, ddw := h.pair(h.randn(s.dim, 1))
		h.ref.RMSNormBackward(rdx, rdw, rg, rx, rw, rr, s.rows, s.dim)
		h.dut.RMSNormBackward(ddx, ddw, dg, dx, dw, dr, s.rows, s.dim)
		h.compare("RMSNormBackward dx (+=)", shape, TolFP32, rdx, ddx)
		h.compare("RMSNormBackward dw (+=)", shape, TolFP32, rdw, ddw)
		h.done()
	}
}

func checkRoPE(h *harness) {
	type rp struct{ rows, heads, hd int }
	shapes := []rp{{5, 3, 6}, {13, 2, 16}, {40, 4, 64}}
	if !h.cfg.Small {
		shapes = append(shapes, rp{2048, 14, 64}, rp{512, 2, 128})
	}
	const P = 97
	for _, s := range shapes {
		shape := fmt.Sprintf("rows %d heads %d hd %d", s.rows, s.heads, s.hd)
		half := s.hd / 2
		cos, sin := make([]float32, P*half), make([]float32, P*half)
		for i := range cos {
			a := h.rng.Float64() * 2 * math.Pi
			cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
		}
		pos := make([]int32, s.rows)
		for i := range pos {
			pos[i] = int32(h.rng.IntN(P))
		}
		rc, dc := h.pair(cos)
		rsn, dsn := h.pair(sin)
		rp, dp := h.pairInt(pos)
		rx, dx := h.pair(h.randn(s.rows*s.heads*s.hd, 1))
		for _, inv := range []bool{false, true} {
			h.ref.RoPE(rx, rp, rc, rsn, s.rows, s.heads, s.hd, inv)
			h.dut.RoPE(dx, dp, dc, dsn, s.rows, s.heads, s.hd, inv)
			name := "RoPE"
			if inv {
				name = "RoPE inverse"
			}
			h.compare(name, shape, TolFP32, rx, dx)
		}
		h.done()
	}
}

func checkSwiGLU(h *harness) {
	for _, n := range h.sized([]int{1, 1000, 100003}, []int{2048 * 4864}) {
		shape := fmt.Sprint(n)
		rg, dg := h.pair(h.randn(n, 3))
		ru, du := h.pair(h.randn(n, 1))
		ro, do := h.pair(nans(n))
		h.ref.SwiGLU(ro, rg, ru, n)
		h.dut.SwiGLU(do, dg, du, n)
		h.compare("SwiGLU", shape, TolFP32, ro, do)
		rd, dd := h.pair(h.randn(n, 1))
		rdg, ddg := h.pair(nans(n))
		rdu, ddu := h.pair(nans(n))
		h.ref.SwiGLUBackward(rdg, rdu, rd, rg, ru, n)
		h.dut.SwiGLUBackward(ddg, ddu, dd, dg, du, n)
		h.compare("SwiGLUBackward dg", shape, TolFP32, rdg, ddg)
		h.compare("SwiGLUBackward du", shape, TolFP32, rdu, ddu)
		h.done()
	}
}

func checkAddScale(h *harness) {
	for _, n := range h.sized([]int{1, 1000, 100003}, []int{2048 * 896 * 4}) {
		shape := fmt.Sprint(n)
		ra, da := h.pair(h.randn(n, 1))
		rb, db := h.pair(h.randn(n, 1))
		ro, do := h.pair(nans(n))
		h.ref.Add(ro, ra, rb, n)
		h.dut.Add(do, da, db, n)
		h.compare("Add", shape, TolFP32, ro, do)
		h.ref.Add(ra, ra, rb, n)
		h.dut.Add(da, da, db, n)
		h.compare("Add (out = a)", shape, TolFP32, ra, da)
		h.ref.Scale(rb, 0.37, n)
		h.dut.Scale(db, 0.37, n)
		h.compare("Scale", shape, TolFP32, rb, db)
		h.done()
	}
}

func checkCrossEntropy(h *harness) {
	type ce struct{ rows, vocab int }
	shapes := []ce{{5, 7}, {33, 512}, {4, 151936}}
	if !h.cfg.Small {
		shapes = append(shapes, ce{512, 151936}, ce{2048, 512}, ce{64, 32000})
	}
	for _, s := range shapes {
		for _, grad := range []bool{false, true} {
			shape := fmt.Sprintf("%dx%d", s.rows, s.vocab)
			logits := h.randn(s.rows*s.vocab, 3)
			targets := make([]int32, s.rows)
			weights := make([]float32, s.rows)
			for r := range targets {
				row := logits[r*s.vocab : (r+1)*s.vocab]
				switch r % 4 {
				case 0: // the argmax: a correct prediction
					arg := 0
					for j, v := range row {
						if v > row[arg] {
							arg = j
						}
					}
					targets[r] = int32(arg)
				case 3:
					targets[r] = -1
				default:
					targets[r] = int32(h.rng.IntN(s.vocab))
				}
				weights[r] = float32(0.5 + h.rng.Float64())
			}
			rl, dl := h.pair(logits)
			rt, dt := h.pairInt(targets)
			rw, dw := h.pair(weights)
			rloss, dloss := h.pair(nans(s.rows))
			rc, dc := h.pair(nans(s.rows))
			h.ref.CrossEntropy(rloss, rc, rl, rt, rw, s.rows, s.vocab, 1.0/37, grad)
			h.dut.CrossEntropy(dloss, dc, dl, dt, dw, s.rows, s.vocab, 1.0/37, grad)
			name := "CrossEntropy"
			if grad {
				name += " grad"
			}
			h.compare(name+" loss", shape, TolLongSum, rloss, dloss)
			h.compare(name+" correct", shape, TolExact, rc, dc)
			h.compare(name+" logits", shape, TolLongSum, rl, dl)
			h.done()
		}
	}
}

func checkAdamW(h *harness) {
	for _, n := range h.sized([]int{1, 1001, 65537}, []int{10_000_019}) {
		shape := fmt.Sprint(n)
		v := h.randn(n, 1e-3)
		for i := range v {
			v[i] = v[i] * v[i]
		}
		rp, dp := h.pair(h.randn(n, 0.02))
		rg, dg := h.pair(h.randn(n, 1e-2))
		rm, dm := h.pair(h.randn(n, 1e-3))
		rv, dv := h.pair(v)
		t := 1 + h.rng.IntN(100)
		hp := kernels.AdamW{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1,
			BC1: float32(1 - math.Pow(0.9, float64(t))), BC2: float32(1 - math.Pow(0.95, float64(t))), GradScale: 0.7}
		h.ref.AdamWStep(rp, rg, rm, rv, n, hp)
		h.dut.AdamWStep(dp, dg, dm, dv, n, hp)
		h.compare("AdamW p", shape, TolFP32, rp, dp)
		h.compare("AdamW m", shape, TolFP32, rm, dm)
		h.compare("AdamW v", shape, TolFP32, rv, dv)
		h.done()
	}
}

func checkSums(h *harness) {
	for _, n := range h.sized([]int{1, 1000, 65537}, []int{50_000_017}) {
		shape := fmt.Sprint(n)
		x := h.randn(n, 1)
		for i := range x {
			x[i] += 0.25
		}
		r, d := h.pair(x)
		for _, sq := range []bool{false, true} {
			var rs, ds float64
			name := "Sum"
			if sq {
				name = "SumSquares"
				rs, ds = h.ref.SumSquares(r), h.dut.SumSquares(d)
			} else {
				rs, ds = h.ref.Sum(r), h.dut.Sum(d)
			}
			rel := math.Abs(ds-rs) / math.Abs(rs)
			if math.IsNaN(ds) || math.IsInf(ds, 0) {
				rel = math.NaN()
			}
			h.record(name, shape, TolFloat64, rel)
		}
		h.done()
	}
}

// bf16RNE is the reference rounding to bfloat16 (nearest, ties to even).
func bf16RNE(f float32) float32 {
	b := math.Float32bits(f)
	if f != f {
		return f
	}
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}

func checkBF16(h *harness) {
	rt, ok := h.dut.(RoundTripper)
	if !ok {
		return
	}
	x := h.randn(100000, 10)
	special := []float32{0, float32(math.Copysign(0, -1)), 1, -1, float32(math.Inf(1)), float32(math.Inf(-1)),
		math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, 1.17549435e-38,
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x3f808001),
		math.Float32frombits(0x7f7f8000), 65504, 3.0e38}
	x = append(x, special...)
	want := make([]float32, len(x))
	for i, v := range x {
		want[i] = bf16RNE(v)
	}
	src := h.dut.Alloc(len(x))
	dst := h.dut.Alloc(len(x))
	h.dut.Upload(src, x)
	h.dut.Upload(dst, nans(len(x)))
	rt.BF16RoundTrip(dst, src)
	got := nans(len(x))
	h.dut.Download(got, dst)
	h.dut.Free(src)
	h.dut.Free(dst)
	h.record("bf16 round trip (RNE)", fmt.Sprint(len(x)), TolExact, RelErr(want, got))
}

// checkHeadLoss compares a dut's fused LM head + cross-entropy
// (kernels.HeadLoss) with the reference's MatMul, CrossEntropy and the two
// backward products. In bf16 mode x and W are bf16 values already, so the
// logits differ only by the order of the sums; dx and dW also see the
// gradient rounded to bf16.
func checkHeadLoss(h *harness) {
	hl, ok := h.dut.(kernels.HeadLoss)
	if !ok {
		return
	}
	type hs struct{ rows, hidden, vocab int }
	shapes := []hs{{37, 64, 1000}, {8, 64, 151936}}
	if !h.cfg.Small {
		shapes = append(shapes, hs{512, 896, 151936}, hs{300, 128, 32000})
	}
	tol := TolMatmulFP32
	if h.cfg.Matmul == "bf16" {
		tol = TolMatmulBF16
	}
	for _, s := range shapes {
		for _, grad := range []bool{false, true} {
			shape := fmt.Sprintf("%d rows x %d, vocab %d", s.rows, s.hidden, s.vocab)
			xv, wv := h.randn(s.rows*s.hidden, 1), h.randn(s.vocab*s.hidden, 0.2)
			if h.cfg.Matmul == "bf16" {
				for i := range xv {
					xv[i] = bf16RNE(xv[i])
				}
				for i := range wv {
					wv[i] = bf16RNE(wv[i])
				}
			}
			rx, dx := h.pair(xv)
			rW, dW := h.pair(wv)
			rlog, _ := h.pair(nans(s.rows * s.vocab))
			h.ref.MatMul(rlog, rx, rW, s.rows, s.vocab, s.hidden, false, true, 0)
			logits := make([]float32, s.rows*s.vocab)
			h.ref.Download(logits, rlog)
			targets, weights := make([]int32, s.rows), make([]float32, s.rows)
			for r := range targets {
				row := logits[r*s.vocab : (r+1)*s.vocab]
				switch r % 4 {
				case 0:
					arg := 0
					for j, v := range row {
						if v > row[arg] {
							arg = j
						}
					}
					targets[r] = int32(arg)
				case 3:
					targets[r] = -1
				default:
					targets[r] = int32(h.rng.IntN(s.vocab))
				}
				weights[r] = float32(0.5 + h.rng.Float64())
			}
			rt, dt := h.pairInt(targets)
			rw, dw := h.pair(weights)
			rloss, dloss := h.pair(nans(s.rows))
			rc, dc := h.pair(nans(s.rows))
			rdx, ddx := h.pair(nans(s.rows * s.hidden))
			dW0 := h.randn(s.vocab*s.hidden, 1)
			rdW, ddW := h.pair(dW0)
			h.ref.CrossEntropy(rloss, rc, rlog, rt, rw, s.rows, s.vocab, 1.0/37, grad)
			if grad {
				h.ref.MatMul(rdx, rlog, rW, s.rows, s.hidden, s.vocab, false, false, 0)
				h.ref.MatMul(rdW, rlog, rx, s.vocab, s.hidden, s.rows, true, false, 1)
			}
			hl.HeadLoss(dloss, dc, ddx, ddW, dx, dW, dt, dw, s.rows, s.hidden, s.vocab, 1.0/37, grad)
			name := "HeadLoss"
			if grad {
				name += " grad"
			}
			h.compare(name+" loss", shape, TolLongSum, rloss, dloss)
			h.compare(name+" correct", shape, TolExact, rc, dc)
			if grad {
				h.compare(name+" dx", shape, tol, rdx, ddx)
				// The product, not the sum: dW's random start can cancel it.
				rv, dv := h.fetch(rdW, ddW)
				for i, c := range dW0 {
					rv[i] -= c
					dv[i] -= c
				}
				h.record(name+" dW (+=)", shape, tol, RelErr(rv, dv))
			}
			h.done()
		}
	}
}
