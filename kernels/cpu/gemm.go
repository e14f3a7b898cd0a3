package cpu

import "github.com/dllm-dev/dllm/kernels"

// Blocking of the packed GEMM (Goto/BLIS loop order). A kc x nr panel of B
// (32 KB) stays in L1 while mc x kc of A (96 KB) streams from L2.
const (
	mr      = 12
	nr      = 32
	kcBlock = 256
	mcBlock = 96
	ncBlock = 1024
)

// gemmArgs is C = op(A) op(B) + beta*C over strided row-major matrices:
// op(A) is m x k, op(B) k x n, C m x n with row stride ldc.
type gemmArgs struct {
	m, n, k int
	a       []float32
	lda     int
	transA  bool
	b       []float32
	ldb     int
	transB  bool
	c       []float32
	ldc     int
	beta    float32
}

// kc splits k into equal blocks of at most kcBlock, so that no product
// ends with a thin remainder block.
func (g *gemmArgs) kc() int {
	n := (g.k + kcBlock - 1) / kcBlock
	return (g.k + n - 1) / n
}

// workspace holds one worker's packing buffers.
type workspace struct {
	packA, packB []float32
	s1, s2, s3   []float32 // attention scores, their gradient, row scales
}

func (w *workspace) bufA(n int) []float32 {
	if cap(w.packA) < n {
		w.packA = make([]float32, max(n, mcBlock*kcBlock))
	}
	return w.packA[:n]
}

func (w *workspace) bufB(n int) []float32 {
	if cap(w.packB) < n {
		w.packB = make([]float32, n)
	}
	return w.packB[:n]
}

// MatMul computes C = op(A) op(B) + beta*C (see kernels.Backend).
func (be *Backend) MatMul(c, a, b kernels.Buf, m, n, k int, transA, transB bool, beta float32) {
	g := gemmArgs{m: m, n: n, k: k, a: a.Host, lda: k, transA: transA, b: b.Host, ldb: n, transB: transB, c: c.Host, ldc: n, beta: beta}
	if transA {
		g.lda = m
	}
	if transB {
		g.ldb = k
	}
	be.gemm(g)
}

// prologue applies beta and reports whether any product remains.
func (g *gemmArgs) prologue() bool {
	if g.m == 0 || g.n == 0 {
		return false
	}
	if g.beta != 1 {
		for i := 0; i < g.m; i++ {
			row := g.c[i*g.ldc : i*g.ldc+g.n]
			if g.beta == 0 {
				if g.k == 0 {
					clear(row)
				}
			} else {
				for j := range row {
					row[j] *= g.beta
				}
			}
		}
	}
	return g.k > 0
}

// gemm runs on all workers: B blocks are packed once and shared, A blocks
// (and, for short A, column ranges) are split among the workers.
func (be *Backend) gemm(g gemmArgs) {
	if !g.prologue() {
		return
	}
	for jc := 0; jc < g.n; jc += ncBlock {
		ncur := min(ncBlock, g.n-jc)
		nPanels := (ncur + nr - 1) / nr
		kc := g.kc()
		for pc := 0; pc < g.k; pc += kc {
			kcur := min(kc, g.k-pc)
			accumulate := g.beta != 0 || pc > 0
			bp := be.shared.bufB(nPanels * kcur * nr)
			be.parallel(nPanels, 4, func(lo, hi, _ int) {
				for jp := lo; jp < hi; jp++ {
					packB(bp[jp*kcur*nr:(jp+1)*kcur*nr], g.b, g.ldb, g.transB, pc, jc+jp*nr, kcur, min(nr, ncur-jp*nr))
				}
			})
			mBlocks := (g.m + mcBlock - 1) / mcBlock
			jSplit := 1
			if mBlocks < be.threads {
				jSplit = min(nPanels, (be.threads+mBlocks-1)/mBlocks)
			}
			be.parallel(mBlocks*jSplit, 1, func(lo, hi, worker int) {
				ap := be.work[worker].bufA(mcBlock * kcur)
				for item := lo; item < hi; item++ {
					ib, js := item/jSplit, item%jSplit
					ic := ib * mcBlock
					mcur := min(mcBlock, g.m-ic)
					packA(ap, g.a, g.lda, g.transA, ic, pc, mcur, kcur)
					jlo, jhi := nPanels*js/jSplit, nPanels*(js+1)/jSplit
					g.macro(ap, bp, ic, mcur, jc, jlo, jhi, kcur, accumulate)
				}
			})
		}
	}
}

// gemmSerial is the same product on one worker with its own workspace, for
// callers that are already parallel (attention).
func gemmSerial(ws *workspace, g gemmArgs) {
	if !g.prologue() {
		return
	}
	for jc := 0; jc < g.n; jc += ncBlock {
		ncur := min(ncBlock, g.n-jc)
		nPanels := (ncur + nr - 1) / nr
		kc := g.kc()
		for pc := 0; pc < g.k; pc += kc {
			kcur := min(kc, g.k-pc)
			accumulate := g.beta != 0 || pc > 0
			bp := ws.bufB(nPanels * kcur * nr)
			for jp := 0; jp < nPanels; jp++ {
				packB(bp[jp*kcur*nr:(jp+1)*kcur*nr], g.b, g.ldb, g.transB, pc, jc+jp*nr, kcur, min(nr, ncur-jp*nr))
			}
			ap := ws.bufA(mcBlock * kcur)
			for ic := 0; ic < g.m; ic += mcBlock {
				mcur := min(mcBlock, g.m-ic)
				packA(ap, g.a, g.lda, g.transA, ic, pc, mcur, kcur)
				g.macro(ap, bp, ic, mcur, jc, 0, nPanels, kcur, accumulate)
			}
		}
	}
}

// macro multiplies one packed A block by packed B panels [jlo, jhi).
func (g *gemmArgs) macro(ap, bp []float32, ic, mcur, jc, jlo, jhi, kcur int, accumulate bool) {
	C, ldc := g.c, g.ldc
	for jp := jlo; jp < jhi; jp++ {
		bpanel := bp[jp*kcur*nr : (jp+1)*kcur*nr]
		cj := jc + jp*nr
		ncols := min(nr, g.n-cj)
		for ip := 0; ip*mr < mcur; ip++ {
			rows := min(mr, mcur-ip*mr)
			apanel := ap[ip*kcur*mr : (ip+1)*kcur*mr]
			ci := ic + ip*mr
			if rows == mr && ncols == nr {
				microKernel(kcur, apanel, bpanel, C[ci*ldc+cj:], ldc, accumulate)
				continue
			}
			var tile [mr * nr]float32
			microKernel(kcur, apanel, bpanel, tile[:], nr, false)
			for r := 0; r < rows; r++ {
				dst := C[(ci+r)*ldc+cj : (ci+r)*ldc+cj+ncols]
				src := tile[r*nr : r*nr+ncols]
				if accumulate {
					for j, v := range src {
						dst[j] += v
					}
				} else {
					copy(dst, src)
				}
			}
		}
	}
}

// packA copies rows [i0, i0+rows) x cols [p0, p0+kcur) of op(A) into panels
// of mr rows, k-major, zero-padding the last panel.
func packA(dst, a []float32, lda int, trans bool, i0, p0, rows, kcur int) {
	for ip := 0; ip*mr < rows; ip++ {
		panel := dst[ip*kcur*mr : (ip+1)*kcur*mr]
		r0 := i0 + ip*mr
		nrows := min(mr, rows-ip*mr)
		if !trans && nrows == mr {
			packFull(panel, a, lda, r0, p0, kcur)
			continue
		}
		if !trans {
			for r := 0; r < nrows; r++ {
				src := a[(r0+r)*lda+p0 : (r0+r)*lda+p0+kcur]
				for p, v := range src {
					panel[p*mr+r] = v
				}
			}
			for r := nrows; r < mr; r++ {
				for p := 0; p < kcur; p++ {
					panel[p*mr+r] = 0
				}
			}
			continue
		}
		for p := 0; p < kcur; p++ {
			d := panel[p*mr : p*mr+mr]
			copy(d, a[(p0+p)*lda+r0:(p0+p)*lda+r0+nrows])
			clear(d[nrows:])
		}
	}
}

// packB copies rows [p0, p0+kcur) x cols [j0, j0+ncols) of op(B) into one
// k-major panel of nr columns, zero-padded.
func packB(dst, b []float32, ldb int, trans bool, p0, j0, kcur, ncols int) {
	if !trans {
		for p := 0; p < kcur; p++ {
			d := dst[p*nr : p*nr+nr]
			copy(d, b[(p0+p)*ldb+j0:(p0+p)*ldb+j0+ncols])
			clear(d[ncols:])
		}
		return
	}
	for c := 0; c < ncols; c++ {
		src := b[(j0+c)*ldb+p0 : (j0+c)*ldb+p0+kcur]
		for p, v := range src {
			dst[p*nr+c] = v
		}
	}
	if ncols < nr {
		for p := 0; p < kcur; p++ {
			clear(dst[p*nr+ncols : p*nr+nr])
		}
	}
}

// packFull packs a full panel of mr rows of an untransposed A, walking k
// once with contiguous writes.
func packFull(panel, a []float32, lda, r0, p0, kcur int) {
	row := func(r int) []float32 { o := (r0+r)*lda + p0; return a[o : o+kcur : o+kcur] }
	a0, a1, a2, a3, a4, a5 := row(0), row(1), row(2), row(3), row(4), row(5)
	a6, a7, a8, a9, a10, a11 := row(6), row(7), row(8), row(9), row(10), row(11)
	for p := 0; p < kcur; p++ {
		d := panel[p*mr : p*mr+mr : p*mr+mr]
		d[0], d[1], d[2], d[3], d[4], d[5] = a0[p], a1[p], a2[p], a3[p], a4[p], a5[p]
		d[6], d[7], d[8], d[9], d[10], d[11] = a6[p], a7[p], a8[p], a9[p], a10[p], a11[p]
	}
}
