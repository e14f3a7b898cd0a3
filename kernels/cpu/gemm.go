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

// MatMul computes C = op(A) op(B) + beta*C (see kernels.Backend).
func (be *Backend) MatMul(c, a, b kernels.Buf, m, n, k int, transA, transB bool, beta float32) {
	gemm(be, c.Host[:m*n], a.Host, b.Host, m, n, k, transA, transB, beta)
}

func gemm(be *Backend, C, A, B []float32, m, n, k int, transA, transB bool, beta float32) {
	switch {
	case beta == 0 && k == 0:
		clear(C)
		return
	case beta != 0 && beta != 1:
		for i := range C {
			C[i] *= beta
		}
	}
	if m == 0 || n == 0 || k == 0 {
		return
	}
	lda, ldb := k, n
	if transA {
		lda = m
	}
	if transB {
		ldb = k
	}
	for jc := 0; jc < n; jc += ncBlock {
		ncur := min(ncBlock, n-jc)
		nPanels := (ncur + nr - 1) / nr
		for pc := 0; pc < k; pc += kcBlock {
			kcur := min(kcBlock, k-pc)
			accumulate := beta != 0 || pc > 0
			need := nPanels * kcur * nr
			if cap(be.packB) < need {
				be.packB = make([]float32, nPanels*kcBlock*nr)
			}
			bp := be.packB[:need]
			be.parallel(nPanels, 4, func(lo, hi, _ int) {
				for jp := lo; jp < hi; jp++ {
					packB(bp[jp*kcur*nr:(jp+1)*kcur*nr], B, ldb, transB, pc, jc+jp*nr, kcur, min(nr, ncur-jp*nr))
				}
			})
			mBlocks := (m + mcBlock - 1) / mcBlock
			jSplit := 1
			if mBlocks < be.threads {
				jSplit = min(nPanels, (be.threads+mBlocks-1)/mBlocks)
			}
			be.parallel(mBlocks*jSplit, 1, func(lo, hi, worker int) {
				ap := be.scratchA(worker, mcBlock*kcur)
				for item := lo; item < hi; item++ {
					ib, js := item/jSplit, item%jSplit
					ic := ib * mcBlock
					mcur := min(mcBlock, m-ic)
					packA(ap, A, lda, transA, ic, pc, mcur, kcur)
					jlo, jhi := nPanels*js/jSplit, nPanels*(js+1)/jSplit
					for jp := jlo; jp < jhi; jp++ {
						bpanel := bp[jp*kcur*nr : (jp+1)*kcur*nr]
						cj := jc + jp*nr
						ncols := min(nr, n-cj)
						for ip := 0; ip*mr < mcur; ip++ {
							rows := min(mr, mcur-ip*mr)
							apanel := ap[ip*kcur*mr : (ip+1)*kcur*mr]
							ci := ic + ip*mr
							if rows == mr && ncols == nr {
								microKernel(kcur, apanel, bpanel, C[ci*n+cj:], n, accumulate)
								continue
							}
							var tile [mr * nr]float32
							microKernel(kcur, apanel, bpanel, tile[:], nr, false)
							for r := 0; r < rows; r++ {
								dst := C[(ci+r)*n+cj : (ci+r)*n+cj+ncols]
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
			})
		}
	}
}

func (be *Backend) scratchA(worker, n int) []float32 {
	if cap(be.scratch[worker]) < n {
		be.scratch[worker] = make([]float32, mcBlock*kcBlock)
	}
	return be.scratch[worker][:n]
}

// packA copies rows [i0, i0+rows) x cols [p0, p0+kcur) of op(A) into panels
// of mr rows, k-major, zero-padding the last panel.
func packA(dst, a []float32, lda int, trans bool, i0, p0, rows, kcur int) {
	for ip := 0; ip*mr < rows; ip++ {
		panel := dst[ip*kcur*mr : (ip+1)*kcur*mr]
		r0 := i0 + ip*mr
		nrows := min(mr, rows-ip*mr)
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
