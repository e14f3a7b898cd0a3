package cpu

import (
	"math"

	"github.com/dllm-dev/dllm/kernels"
)

// Attention is computed per (row, head) as two GEMMs around a masked
// softmax; the backward recomputes the probabilities from the saved
// log-sum-exp (FlashAttention's recurrence, without tiling: one Lq x Lk
// score block per worker fits in cache for the sequence lengths a CPU
// trains on).

// visKey identifies a visibility matrix; the annealed rule's matrix is the
// same for every row, head and layer of a step, so it is built once.
type visKey struct {
	mode         kernels.Mode
	ratio        float32
	seed         uint64
	block, half  int
	lq, lk, qoff int
}

type visCache struct {
	key  visKey
	mask []bool
	ok   bool
}

// visMask returns visible(qoff+i, j) for i < lq, j < lk, row-major.
func (be *Backend) visMask(vis *kernels.Visibility, lq, lk, qoff int) []bool {
	k := visKey{vis.Mode, vis.Ratio, vis.Seed, vis.Block, vis.Half, lq, lk, qoff}
	if be.vis.ok && be.vis.key == k {
		return be.vis.mask
	}
	if cap(be.vis.mask) < lq*lk {
		be.vis.mask = make([]bool, lq*lk)
	}
	m := be.vis.mask[:lq*lk]
	be.parallel(lq, 8, func(lo, hi, _ int) {
		for i := lo; i < hi; i++ {
			row := m[i*lk : (i+1)*lk]
			for j := range row {
				row[j] = vis.Visible(qoff+i, j)
			}
		}
	})
	be.vis = visCache{key: k, mask: m, ok: true}
	return m
}

func (w *workspace) scratch(s *[]float32, n int) []float32 {
	if cap(*s) < n {
		*s = make([]float32, n)
	}
	return (*s)[:n]
}

// maskRow scales the visible scores of one query row and sets the others to
// -Inf; it returns the largest visible score and the last visible column.
// dense says every column is visible (bidirectional, no documents), prefix
// that the visible columns are exactly [0, prefix] (causal and block rules
// without documents; -1 when not).
func maskRow(row []float32, mask []bool, docs []int32, qdoc int32, useDocs, dense bool, prefix int, scale float32) (mx float32, last int) {
	inf := float32(math.Inf(-1))
	mx, last = inf, -1
	switch {
	case dense:
		return scaleMax(row, scale), len(row) - 1
	case prefix >= 0:
		mx = scaleMax(row[:prefix+1], scale)
		for j := prefix + 1; j < len(row); j++ {
			row[j] = inf
		}
		return mx, prefix
	}
	mask = mask[:len(row)]
	if useDocs {
		docs = docs[:len(row)]
	}
	for j := range row {
		if mask[j] && (!useDocs || docs[j] == qdoc) {
			v := row[j] * scale
			row[j] = v
			if v > mx {
				mx = v
			}
			last = j
		} else {
			row[j] = inf
		}
	}
	return mx, last
}

// rowShape reports the fast paths of maskRow for query position qpos.
func rowShape(vis *kernels.Visibility, qpos, lk int) (dense bool, prefix int) {
	if vis.DocMask {
		return false, -1
	}
	switch vis.Mode {
	case kernels.Bidirectional:
		return true, -1
	case kernels.Causal, kernels.Block:
		return false, vis.MaxVisibleKey(qpos, lk)
	}
	return false, -1
}

// Attention computes softmax(q k^T / sqrt(d)) v under vis.
func (be *Backend) Attention(out, lse, q, k, v kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	Q, K, V, O, LSE, DOC := q.Host, k.Host, v.Host, out.Host, lse.Host, docs.Host
	hd, heads, lq, lk := d.HeadDim, d.Heads, d.Lq, d.Lk
	qw, kw := heads*hd, d.KVHeads*hd
	group := heads / d.KVHeads
	stride := d.Stride()
	scale := float32(1 / math.Sqrt(float64(hd)))
	mask := be.visMask(&vis, lq, lk, d.QOff)
	be.parallel(d.B*heads, 1, func(lo, hi, w int) {
		ws := &be.work[w]
		S := ws.scratch(&ws.s1, lq*lk)
		inv := ws.scratch(&ws.s3, lq)
		for item := lo; item < hi; item++ {
			b, h := item/heads, item%heads
			kvh := h / group
			qo, ko := b*lq*qw+h*hd, b*stride*kw+kvh*hd
			gemmSerial(ws, gemmArgs{m: lq, n: lk, k: hd, a: Q[qo:], lda: qw, b: K[ko:], ldb: kw, transB: true, c: S, ldc: lk})
			var rowDocs []int32
			if vis.DocMask {
				rowDocs = DOC[b*stride : b*stride+lk]
			}
			for i := 0; i < lq; i++ {
				row := S[i*lk : (i+1)*lk]
				var qdoc int32
				if vis.DocMask {
					qdoc = rowDocs[d.QOff+i]
				}
				dense, prefix := rowShape(&vis, d.QOff+i, lk)
				mx, last := maskRow(row, mask[i*lk:(i+1)*lk], rowDocs, qdoc, vis.DocMask, dense, prefix, scale)
				li := (b*lq+i)*heads + h
				if last < 0 {
					clear(row)
					inv[i], LSE[li] = 0, 0
					continue
				}
				sum := expShift(row[:last+1], row[:last+1], mx)
				clear(row[last+1:])
				inv[i] = 1 / sum
				LSE[li] = mx + float32(math.Log(float64(sum)))
			}
			gemmSerial(ws, gemmArgs{m: lq, n: hd, k: lk, a: S, lda: lk, b: V[ko:], ldb: kw, c: O[qo:], ldc: qw})
			for i := 0; i < lq; i++ {
				o := O[qo+i*qw : qo+i*qw+hd]
				for j := range o {
					o[j] *= inv[i]
				}
			}
		}
	})
}

// AttentionBackward: one (row, KV head) per work item owns its dk and dv
// and the dq of its query heads, so nothing races.
func (be *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	Q, K, V, O, LSE, DOC := q.Host, k.Host, v.Host, out.Host, lse.Host, docs.Host
	DQ, DK, DV, DO := dq.Host, dk.Host, dv.Host, dout.Host
	hd, heads, L := d.HeadDim, d.Heads, d.Lq
	qw, kw := heads*hd, d.KVHeads*hd
	group := heads / d.KVHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	mask := be.visMask(&vis, L, L, 0)
	be.parallel(d.B*d.KVHeads, 1, func(lo, hi, w int) {
		ws := &be.work[w]
		P := ws.scratch(&ws.s1, L*L)
		dS := ws.scratch(&ws.s2, L*L)
		for item := lo; item < hi; item++ {
			b, kvh := item/d.KVHeads, item%d.KVHeads
			ko := b*L*kw + kvh*hd
			var rowDocs []int32
			if vis.DocMask {
				rowDocs = DOC[b*L : (b+1)*L]
			}
			for hh := 0; hh < group; hh++ {
				h := kvh*group + hh
				qo := b*L*qw + h*hd
				gemmSerial(ws, gemmArgs{m: L, n: L, k: hd, a: Q[qo:], lda: qw, b: K[ko:], ldb: kw, transB: true, c: P, ldc: L})
				gemmSerial(ws, gemmArgs{m: L, n: L, k: hd, a: DO[qo:], lda: qw, b: V[ko:], ldb: kw, transB: true, c: dS, ldc: L})
				for i := 0; i < L; i++ {
					row := P[i*L : (i+1)*L]
					var qdoc int32
					if vis.DocMask {
						qdoc = rowDocs[i]
					}
					dense, prefix := rowShape(&vis, i, L)
					maskRow(row, mask[i*L:(i+1)*L], rowDocs, qdoc, vis.DocMask, dense, prefix, scale)
					expShift(row, row, LSE[(b*L+i)*heads+h])
					D := dot(DO[qo+i*qw:qo+i*qw+hd], O[qo+i*qw:qo+i*qw+hd])
					ds := dS[i*L : (i+1)*L]
					for j, p := range row {
						ds[j] = p * (ds[j] - D) * scale
					}
				}
				beta := float32(1)
				if hh == 0 {
					beta = 0
				}
				gemmSerial(ws, gemmArgs{m: L, n: hd, k: L, a: dS, lda: L, b: K[ko:], ldb: kw, c: DQ[qo:], ldc: qw})
				gemmSerial(ws, gemmArgs{m: L, n: hd, k: L, a: dS, lda: L, transA: true, b: Q[qo:], ldb: qw, c: DK[ko:], ldc: kw, beta: beta})
				gemmSerial(ws, gemmArgs{m: L, n: hd, k: L, a: P, lda: L, transA: true, b: DO[qo:], ldb: qw, c: DV[ko:], ldc: kw, beta: beta})
			}
		}
	})
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
