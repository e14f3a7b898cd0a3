package cuda

import "github.com/dllm-dev/dllm/kernels"

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// RouterTopK: one thread per row.
func (be *Backend) RouterTopK(topW, probs kernels.Buf, topIdx kernels.IBuf, logits, shared kernels.Buf, rows, experts, k int, renorm bool) {
	if rows > 0 {
		be.launch(kRouterTopK, grid1(rows), block256, new(params).ptr(topW.Dev).ptr(probs.Dev).ptr(topIdx.Dev).ptr(logits.Dev).
			ptr(shared.Dev).i32(rows).i32(experts).i32(k).i32(b2i(renorm)))
	}
}

// RouterBackward: one thread per row.
func (be *Backend) RouterBackward(dlogits, dshared, dtopW, topW, probs kernels.Buf, topIdx kernels.IBuf, auxGrad kernels.Buf, rows, experts, k int, renorm bool) {
	if rows > 0 {
		be.launch(kRouterBwd, grid1(rows), block256, new(params).ptr(dlogits.Dev).ptr(dshared.Dev).ptr(dtopW.Dev).ptr(topW.Dev).
			ptr(probs.Dev).ptr(topIdx.Dev).ptr(auxGrad.Dev).i32(rows).i32(experts).i32(k).i32(b2i(renorm)))
	}
}

// MoEDispatch: one block, a thread per group.
func (be *Backend) MoEDispatch(offsets, slotRow, slotOf, topIdx kernels.IBuf, rows, kOut, groups int) {
	be.launch(kMoEDispatch, dim3{1, 1, 1}, block256, new(params).ptr(offsets.Dev).ptr(slotRow.Dev).ptr(slotOf.Dev).ptr(topIdx.Dev).
		i32(rows).i32(kOut).i32(groups))
}

// MoECombine: one thread per output element.
func (be *Backend) MoECombine(out, y, w kernels.Buf, slotOf kernels.IBuf, rows, kOut, dim int, accumulate bool) {
	if rows*dim > 0 {
		be.launch(kMoECombine, grid1(rows*dim), block256, new(params).ptr(out.Dev).ptr(y.Dev).ptr(w.Dev).ptr(slotOf.Dev).
			i64(rows).i32(kOut).i32(dim).i32(b2i(accumulate)))
	}
}

// MoECombineBackward: dy one thread per element, dw one warp per assignment.
func (be *Backend) MoECombineBackward(dy, dw, dout, y, w kernels.Buf, slotOf kernels.IBuf, rows, kOut, dim int) {
	n := rows * kOut
	if n*dim == 0 {
		return
	}
	be.launch(kMoECombineBwdDY, grid1(n*dim), block256, new(params).ptr(dy.Dev).ptr(dout.Dev).ptr(w.Dev).ptr(slotOf.Dev).
		i64(rows).i32(kOut).i32(dim))
	be.launch(kMoECombineBwdDW, dim3{uint32(min((n+7)/8, 65535)), 1, 1}, dim3{32, 8, 1}, new(params).ptr(dw.Dev).ptr(dout.Dev).
		ptr(y.Dev).ptr(slotOf.Dev).i64(n).i32(kOut).i32(dim))
}
