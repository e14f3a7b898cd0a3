package cpu

import "github.com/dllm-dev/dllm/kernels"

// kOut is the number of assignments per row.
func kOut(k int, shared bool) int {
	if shared {
		return k + 1
	}
	return k
}

// RouterTopK: softmax, top-k by repeated selection (k is small), optional
// renormalisation, and the shared expert's sigmoid gate.
func (be *Backend) RouterTopK(topW, probs kernels.Buf, topIdx kernels.IBuf, logits, shared kernels.Buf, rows, experts, k int, renorm bool) {
	ko := kOut(k, shared.N > 0)
	W, P, I, X, SL := topW.Host, probs.Host, topIdx.Host, logits.Host, shared.Host
	be.parallel(rows, 16, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			x, p := X[r*experts:(r+1)*experts], P[r*experts:(r+1)*experts]
			mx := x[0]
			for _, v := range x {
				mx = max(mx, v)
			}
			var sum float32
			for e, v := range x {
				p[e] = expf(v - mx)
				sum += p[e]
			}
			inv := 1 / sum
			for e := range p {
				p[e] *= inv
			}
			w, idx := W[r*ko:(r+1)*ko], I[r*ko:(r+1)*ko]
			var tot float32
			for j := 0; j < k; j++ {
				best := -1
				for e, v := range p {
					if chosen(idx[:j], e) {
						continue
					}
					if best < 0 || v > p[best] {
						best = e
					}
				}
				idx[j], w[j] = int32(best), p[best]
				tot += p[best]
			}
			if renorm {
				for j := 0; j < k; j++ {
					w[j] /= tot
				}
			}
			if SL != nil {
				idx[k] = int32(experts)
				w[k] = 1 / (1 + expf(-SL[r]))
			}
		}
	})
}

func chosen(idx []int32, e int) bool {
	for _, i := range idx {
		if int(i) == e {
			return true
		}
	}
	return false
}

// RouterBackward: through the renormalisation, the softmax and the sigmoid.
func (be *Backend) RouterBackward(dlogits, dshared, dtopW, topW, probs kernels.Buf, topIdx kernels.IBuf, auxGrad kernels.Buf, rows, experts, k int, renorm bool) {
	ko := kOut(k, dshared.N > 0)
	D, DS, DW, W, P, I := dlogits.Host, dshared.Host, dtopW.Host, topW.Host, probs.Host, topIdx.Host
	var aux []float32
	if auxGrad.N > 0 {
		aux = auxGrad.Host[:experts]
	}
	be.parallel(rows, 16, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			d, p := D[r*experts:(r+1)*experts], P[r*experts:(r+1)*experts]
			dw, w, idx := DW[r*ko:(r+1)*ko], W[r*ko:(r+1)*ko], I[r*ko:(r+1)*ko]
			if aux != nil {
				copy(d, aux)
			} else {
				clear(d)
			}
			if renorm {
				// w_j = p_j / S: dp_j = (dw_j - sum_l dw_l w_l) / S.
				var dot, s float32
				for j := 0; j < k; j++ {
					dot += dw[j] * w[j]
					s += p[idx[j]]
				}
				for j := 0; j < k; j++ {
					d[idx[j]] += (dw[j] - dot) / s
				}
			} else {
				for j := 0; j < k; j++ {
					d[idx[j]] += dw[j]
				}
			}
			var dot float32
			for e, g := range d {
				dot += g * p[e]
			}
			for e, g := range d {
				d[e] = p[e] * (g - dot)
			}
			if DS != nil {
				s := w[k]
				DS[r] = dw[k] * s * (1 - s)
			}
		}
	})
}

// MoEDispatch is a stable counting sort.
func (be *Backend) MoEDispatch(offsets, slotRow, slotOf, topIdx kernels.IBuf, rows, kOut, groups int) {
	O, SR, SO, I := offsets.Host[:groups+1], slotRow.Host, slotOf.Host, topIdx.Host[:rows*kOut]
	clear(O)
	for _, e := range I {
		O[e+1]++
	}
	for g := 0; g < groups; g++ {
		O[g+1] += O[g]
	}
	next := be.dispatchNext(groups)
	copy(next, O[:groups])
	for a, e := range I {
		s := next[e]
		next[e]++
		SR[s] = int32(a / kOut)
		SO[a] = s
	}
}

func (be *Backend) dispatchNext(groups int) []int32 {
	if cap(be.next) < groups {
		be.next = make([]int32, groups)
	}
	return be.next[:groups]
}

// MoECombine gathers each row's assignments in order: deterministic, no
// scatter.
func (be *Backend) MoECombine(out, y, w kernels.Buf, slotOf kernels.IBuf, rows, kOut, dim int, accumulate bool) {
	O, Y, S := out.Host, y.Host, slotOf.Host
	var W []float32
	if w.N > 0 {
		W = w.Host
	}
	be.parallel(rows, 8, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			o := O[r*dim : (r+1)*dim]
			if !accumulate {
				clear(o)
			}
			for j := 0; j < kOut; j++ {
				a := r*kOut + j
				s := int(S[a])
				ys := Y[s*dim : (s+1)*dim]
				if W == nil {
					for i, v := range ys {
						o[i] += v
					}
					continue
				}
				c := W[a]
				for i, v := range ys {
					o[i] += c * v
				}
			}
		}
	})
}

// MoECombineBackward writes each assignment's slot once.
func (be *Backend) MoECombineBackward(dy, dw, dout, y, w kernels.Buf, slotOf kernels.IBuf, rows, kOut, dim int) {
	DY, DW, DO, Y, W, S := dy.Host, dw.Host, dout.Host, y.Host, w.Host, slotOf.Host
	be.parallel(rows, 8, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			g := DO[r*dim : (r+1)*dim]
			for j := 0; j < kOut; j++ {
				a := r*kOut + j
				s := int(S[a])
				ys, dys := Y[s*dim:(s+1)*dim], DY[s*dim:(s+1)*dim]
				c := W[a]
				var dot float32
				for i, v := range g {
					dys[i] = c * v
					dot += v * ys[i]
				}
				DW[a] = dot
			}
		}
	})
}
