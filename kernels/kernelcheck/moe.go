package kernelcheck

import (
	"fmt"
	"math"

	"github.com/dllm-dev/dllm/kernels"
)

// compareInt downloads a pair of int buffers and records an exact match.
func (h *harness) compareInt(op, shape string, r, d kernels.IBuf) {
	rv, dv := make([]int32, r.N), make([]int32, d.N)
	h.ref.DownloadInt(rv, r)
	h.dut.DownloadInt(dv, d)
	rel := 0.0
	for i := range rv {
		if rv[i] != dv[i] {
			rel = math.NaN()
			break
		}
	}
	h.record(op, shape, TolExact, rel)
}

func poisonInt(n int) []int32 {
	x := make([]int32, n)
	for i := range x {
		x[i] = -7
	}
	return x
}

// checkMoE runs the routing ops on both backends: the router's forward
// and backward (with and without renormalisation, shared expert and the
// aux gradient), the dispatch, and the combine with its backward. Each op
// after the router reads the reference's outputs, so a difference is the
// op's own.
func checkMoE(h *harness) {
	type moe struct{ rows, experts, k, dim int }
	shapes := []moe{{1, 4, 1, 8}, {37, 8, 2, 20}, {130, 60, 4, 33}}
	if !h.cfg.Small {
		shapes = append(shapes, moe{4096, 128, 8, 2048}, moe{4096, 8, 2, 4096})
	}
	for _, s := range shapes {
		for _, v := range []struct{ renorm, shared bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
			shape := fmt.Sprintf("rows %d experts %d k %d dim %d renorm %v shared %v", s.rows, s.experts, s.k, s.dim, v.renorm, v.shared)
			ko := s.k
			if v.shared {
				ko++
			}
			groups, n := s.experts, s.rows*ko
			var rsl, dsl, rds, dds kernels.Buf // the shared gate's logits and their gradient
			if v.shared {
				groups++
				rsl, dsl = h.pair(h.randn(s.rows, 2))
				rds, dds = h.pair(nans(s.rows))
			}
			rl, dl := h.pair(h.randn(s.rows*s.experts, 2))
			rw, dw := h.pair(nans(n))
			rp, dp := h.pair(nans(s.rows * s.experts))
			ri, di := h.pairInt(poisonInt(n))
			h.ref.RouterTopK(rw, rp, ri, rl, rsl, s.rows, s.experts, s.k, v.renorm)
			h.dut.RouterTopK(dw, dp, di, dl, dsl, s.rows, s.experts, s.k, v.renorm)
			h.compare("RouterTopK probs", shape, TolFP32, rp, dp)
			h.compare("RouterTopK weights", shape, TolFP32, rw, dw)
			h.compareInt("RouterTopK experts", shape, ri, di)

			// The rest reads the reference's routing on both sides.
			wv, pv, iv := make([]float32, n), make([]float32, s.rows*s.experts), make([]int32, n)
			h.ref.Download(wv, rw)
			h.ref.Download(pv, rp)
			h.ref.DownloadInt(iv, ri)
			h.dut.Upload(dw, wv)
			h.dut.Upload(dp, pv)
			h.dut.UploadInt(di, iv)
			rdw, ddw := h.pair(h.randn(n, 1))
			rd, dd := h.pair(nans(s.rows * s.experts))
			ra, da := h.pair(h.randn(s.experts, 0.1))
			for _, aux := range []bool{false, true} {
				ar, ad := kernels.Buf{}, kernels.Buf{}
				if aux {
					ar, ad = ra, da
				}
				h.ref.RouterBackward(rd, rds, rdw, rw, rp, ri, ar, s.rows, s.experts, s.k, v.renorm)
				h.dut.RouterBackward(dd, dds, ddw, dw, dp, di, ad, s.rows, s.experts, s.k, v.renorm)
				h.compare(fmt.Sprintf("RouterBackward aux %v", aux), shape, TolFP32, rd, dd)
				if v.shared {
					h.compare("RouterBackward shared gate", shape, TolFP32, rds, dds)
				}
			}

			ro, do := h.pairInt(poisonInt(groups + 1))
			rr, dr := h.pairInt(poisonInt(n))
			rs, ds := h.pairInt(poisonInt(n))
			h.ref.MoEDispatch(ro, rr, rs, ri, s.rows, ko, groups)
			h.dut.MoEDispatch(do, dr, ds, di, s.rows, ko, groups)
			h.compareInt("MoEDispatch offsets", shape, ro, do)
			h.compareInt("MoEDispatch slot rows", shape, rr, dr)
			h.compareInt("MoEDispatch slots", shape, rs, ds)

			ry, dy := h.pair(h.randn(n*s.dim, 1))
			init := h.randn(s.rows*s.dim, 1)
			rc, dc := h.pair(nans(s.rows * s.dim))
			h.ref.MoECombine(rc, ry, rw, rs, s.rows, ko, s.dim, false)
			h.dut.MoECombine(dc, dy, dw, ds, s.rows, ko, s.dim, false)
			h.compare("MoECombine", shape, TolFP32, rc, dc)
			rc2, dc2 := h.pair(init)
			h.ref.MoECombine(rc2, ry, kernels.Buf{}, rs, s.rows, ko, s.dim, true)
			h.dut.MoECombine(dc2, dy, kernels.Buf{}, ds, s.rows, ko, s.dim, true)
			h.compare("MoECombine unweighted (+=)", shape, TolFP32, rc2, dc2)

			rg, dg := h.pair(h.randn(s.rows*s.dim, 1))
			rdy, ddy := h.pair(nans(n * s.dim))
			rdw2, ddw2 := h.pair(nans(n))
			h.ref.MoECombineBackward(rdy, rdw2, rg, ry, rw, rs, s.rows, ko, s.dim)
			h.dut.MoECombineBackward(ddy, ddw2, dg, dy, dw, ds, s.rows, ko, s.dim)
			h.compare("MoECombineBackward dy", shape, TolFP32, rdy, ddy)
			h.compare("MoECombineBackward dw", shape, TolFP32, rdw2, ddw2)
			h.done()
		}
	}
}
