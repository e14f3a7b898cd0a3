package cpu

import (
	"math"

	"github.com/dllm-dev/dllm/kernels"
)

func (be *Backend) rowScratch(w, n int) []float32 {
	if cap(be.rows[w]) < n {
		be.rows[w] = make([]float32, n)
	}
	return be.rows[w][:n]
}

func (be *Backend) maskScratch(w, n int) []bool {
	if cap(be.masks[w]) < n {
		be.masks[w] = make([]bool, n)
	}
	return be.masks[w][:n]
}

// visibleRow fills mask[j] for query position qpos of batch row b and
// returns the last key that may be visible.
func visibleRow(mask []bool, vis *kernels.Visibility, docs []int32, base, qpos, lk int) int {
	last := vis.MaxVisibleKey(qpos, lk)
	for j := 0; j <= last; j++ {
		ok := vis.Visible(qpos, j)
		if ok && vis.DocMask {
			ok = docs[base+j] == docs[base+qpos]
		}
		mask[j] = ok
	}
	return last
}

func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// axpy: y += a*x.
func axpy(y, x []float32, a float32) {
	x = x[:len(y)]
	for i := range y {
		y[i] += a * x[i]
	}
}

// Attention is exact softmax attention, one (row, query) per work item; the
// visibility row is computed once and shared by all heads.
func (be *Backend) Attention(out, lse, q, k, v kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	Q, K, V, O, LSE, DOC := q.Host, k.Host, v.Host, out.Host, lse.Host, docs.Host
	hd, heads := d.HeadDim, d.Heads
	qw, kw := heads*hd, d.KVHeads*hd
	group := heads / d.KVHeads
	stride := d.Stride()
	scale := float32(1 / math.Sqrt(float64(hd)))
	be.parallel(d.B*d.Lq, 1, func(lo, hi, w int) {
		scores := be.rowScratch(w, d.Lk)
		mask := be.maskScratch(w, d.Lk)
		for item := lo; item < hi; item++ {
			b, i := item/d.Lq, item%d.Lq
			qpos := d.QOff + i
			last := visibleRow(mask, &vis, DOC, b*stride, qpos, d.Lk)
			for h := 0; h < heads; h++ {
				kvh := h / group
				qv := Q[(b*d.Lq+i)*qw+h*hd : (b*d.Lq+i)*qw+(h+1)*hd]
				mx := float32(math.Inf(-1))
				for j := 0; j <= last; j++ {
					if !mask[j] {
						continue
					}
					r := (b*stride + j) * kw
					s := dot(qv, K[r+kvh*hd:r+(kvh+1)*hd]) * scale
					scores[j] = s
					mx = max(mx, s)
				}
				var sum float32
				for j := 0; j <= last; j++ {
					if mask[j] {
						e := expf(scores[j] - mx)
						scores[j] = e
						sum += e
					}
				}
				o := O[(b*d.Lq+i)*qw+h*hd : (b*d.Lq+i)*qw+(h+1)*hd]
				clear(o)
				if sum == 0 {
					LSE[(b*d.Lq+i)*heads+h] = 0
					continue
				}
				inv := 1 / sum
				for j := 0; j <= last; j++ {
					if mask[j] {
						r := (b*stride + j) * kw
						axpy(o, V[r+kvh*hd:r+(kvh+1)*hd], scores[j]*inv)
					}
				}
				LSE[(b*d.Lq+i)*heads+h] = mx + float32(math.Log(float64(sum)))
			}
		}
	})
}

// AttentionBackward recomputes the probabilities from lse (FlashAttention's
// backward). One (row, KV head) per work item owns its dk and dv rows and the
// dq rows of its query heads, so nothing races.
func (be *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	Q, K, V, O, LSE, DOC := q.Host, k.Host, v.Host, out.Host, lse.Host, docs.Host
	DQ, DK, DV, DO := dq.Host, dk.Host, dv.Host, dout.Host
	hd, heads, L := d.HeadDim, d.Heads, d.Lq
	qw, kw := heads*hd, d.KVHeads*hd
	group := heads / d.KVHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	be.parallel(d.B*d.KVHeads, 1, func(lo, hi, w int) {
		mask := be.maskScratch(w, L)
		for item := lo; item < hi; item++ {
			b, kvh := item/d.KVHeads, item%d.KVHeads
			for j := 0; j < L; j++ {
				r := (b*L + j) * kw
				clear(DK[r+kvh*hd : r+(kvh+1)*hd])
				clear(DV[r+kvh*hd : r+(kvh+1)*hd])
			}
			for i := 0; i < L; i++ {
				last := visibleRow(mask, &vis, DOC, b*L, i, L)
				for h := kvh * group; h < (kvh+1)*group; h++ {
					qr := (b*L+i)*qw + h*hd
					qv, dov, ov, dqv := Q[qr:qr+hd], DO[qr:qr+hd], O[qr:qr+hd], DQ[qr:qr+hd]
					clear(dqv)
					D := dot(dov, ov)
					l := LSE[(b*L+i)*heads+h]
					for j := 0; j <= last; j++ {
						if !mask[j] {
							continue
						}
						r := (b*L+j)*kw + kvh*hd
						kj, vj := K[r:r+hd], V[r:r+hd]
						p := expf(dot(qv, kj)*scale - l)
						ds := p * (dot(dov, vj) - D) * scale
						axpy(dqv, kj, ds)
						axpy(DK[r:r+hd], qv, ds)
						axpy(DV[r:r+hd], dov, p)
					}
				}
			}
		}
	})
}
