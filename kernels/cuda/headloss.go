package cuda

import "github.com/dllm-dev/dllm/kernels"

var _ kernels.HeadLoss = (*Backend)(nil)

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// HeadLoss is the LM head fused with CrossEntropy (kernels.HeadLoss): the
// logits x W^T are made chunk by chunk over the vocabulary and folded into
// each row's running max, sum of exponentials, argmax and target logit;
// with grad a second pass remakes each chunk, turns it into its gradient
// and adds its share of dx = dlogits W and dW += dlogits^T x. One chunk
// (the whole vocabulary fits) is not remade. In bf16 mode x and W are cast
// to bf16 once for all the chunks' products (W not, when held in bf16), and
// each chunk's gradient once for its dx and dW products.
func (be *Backend) HeadLoss(loss, correct, dx, dW, x, W kernels.Buf, targets kernels.IBuf, weights kernels.Buf, rows, hidden, vocab int, gradScale float32, grad bool) {
	if be.failed.Load() || rows <= 0 || vocab <= 0 || hidden <= 0 {
		return
	}
	if x.N < rows*hidden || W.N < vocab*hidden || (grad && dx.N < rows*hidden) || (dW.N > 0 && dW.N < vocab*hidden) {
		be.fail(errorf("HeadLoss: %d rows of %d, vocabulary %d on buffers of %d, %d, %d and %d values", rows, hidden, vocab, x.N, W.N, dx.N, dW.N))
		return
	}
	maxFloats := be.headChunk
	if maxFloats == 0 {
		maxFloats = kernels.HeadChunkFloats
	}
	// Scratch is sized by x's capacity in rows, not by this call's rows: the
	// same blocks serve every step, however many rows each one scores.
	rcap := x.N / hidden
	vc := kernels.HeadCols(rcap, vocab, maxFloats)
	chunk := be.scratch(rcap * vc * 4)
	stats := be.scratch(rcap * 5 * 4)
	if chunk == 0 || stats == 0 {
		return
	}
	defer be.release(chunk)
	defer be.release(stats)
	ms, ss, args, tls, lse := stats, stats+uintptr(rows)*4, stats+uintptr(rows)*8, stats+uintptr(rows)*12, stats+uintptr(rows)*16
	if be.halfOperand("HeadLoss", x, dx, dW) || (be.fp32 && be.halfOperand("HeadLoss with fp32 matmuls", W)) {
		return
	}
	var xb, wb uintptr
	if !be.fp32 {
		if xb = be.scratch(rcap * hidden * 2); xb == 0 {
			return
		}
		defer be.release(xb)
		be.cast(kCastBF16, xb, x.Dev, rows*hidden)
		if W.Half {
			wb = W.Dev
		} else {
			if wb = be.scratch(vocab * hidden * 2); wb == 0 {
				return
			}
			defer be.release(wb)
			be.cast(kCastBF16, wb, W.Dev, vocab*hidden)
		}
	}
	logits := func(c0, n int) kernels.Buf {
		out := kernels.Buf{Dev: chunk, N: rows * n}
		var w16 uintptr
		if wb != 0 {
			w16 = wb + uintptr(c0*hidden)*2
		}
		be.matmul(out, x, W.Slice(c0*hidden, n*hidden), rows, n, hidden, false, true, 0, xb, w16)
		return out
	}
	grid := dim3{uint32(rows), 1, 1}
	for c0 := 0; c0 < vocab; c0 += vc {
		n := min(vc, vocab-c0)
		logits(c0, n)
		be.launch(kCEChunkStats, grid, dim3{256, 1, 1}, new(params).ptr(ms).ptr(ss).ptr(args).ptr(tls).ptr(chunk).
			ptr(targets.Dev).i32(n).i32(c0).i32(boolInt(c0 == 0)))
	}
	be.launch(kCEFinish, grid1(rows), block256, new(params).ptr(loss.Dev).ptr(correct.Dev).ptr(lse).ptr(ms).ptr(ss).
		ptr(args).ptr(tls).ptr(targets.Dev).ptr(weights.Dev).i64(rows))
	if !grad {
		return
	}
	var gb uintptr // the chunk's gradient in bf16, read by both products
	if !be.fp32 && dW.N > 0 && !be.headGradPerProduct {
		if gb = be.scratch(rcap * vc * 2); gb == 0 {
			return
		}
		defer be.release(gb)
	}
	for c0 := 0; c0 < vocab; c0 += vc {
		n := min(vc, vocab-c0)
		g := kernels.Buf{Dev: chunk, N: rows * n}
		if c0 > 0 || n < vocab {
			logits(c0, n)
		}
		be.launch(kCEChunkGrad, grid, dim3{256, 1, 1}, new(params).ptr(chunk).ptr(lse).ptr(targets.Dev).ptr(weights.Dev).
			i32(n).i32(c0).f32(gradScale))
		var w16 uintptr
		if wb != 0 {
			w16 = wb + uintptr(c0*hidden)*2
		}
		if gb != 0 {
			be.cast(kCastBF16, gb, chunk, rows*n)
		}
		beta := float32(boolInt(c0 > 0))
		be.matmul(dx, g, W.Slice(c0*hidden, n*hidden), rows, hidden, n, false, false, beta, gb, w16)
		if dW.N > 0 {
			be.matmul(dW.Slice(c0*hidden, n*hidden), g, x, n, hidden, rows, true, false, 1, gb, xb)
		}
	}
}
