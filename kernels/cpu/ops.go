package cpu

import (
	"math"

	"github.com/dllm-dev/dllm/kernels"
)

// AddBias adds bias to every row of c.
func (be *Backend) AddBias(c, bias kernels.Buf, rows, cols int) {
	C, bs := c.Host, bias.Host[:cols]
	be.parallel(rows, 64, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			row := C[r*cols : (r+1)*cols]
			for j, v := range bs {
				row[j] += v
			}
		}
	})
}

// BiasBackward accumulates column sums; workers own disjoint columns.
func (be *Backend) BiasBackward(dbias, dout kernels.Buf, rows, cols int) {
	D, db := dout.Host, dbias.Host[:cols]
	be.parallel(cols, 16, func(lo, hi, _ int) {
		for r := 0; r < rows; r++ {
			row := D[r*cols+lo : r*cols+hi]
			for j, v := range row {
				db[lo+j] += v
			}
		}
	})
}

// Embedding gathers rows.
func (be *Backend) Embedding(out, table kernels.Buf, ids kernels.IBuf, n, dim int) {
	O, T, I := out.Host, table.Host, ids.Host[:n]
	be.parallel(n, 64, func(lo, hi, _ int) {
		for t := lo; t < hi; t++ {
			id := int(I[t])
			copy(O[t*dim:(t+1)*dim], T[id*dim:(id+1)*dim])
		}
	})
}

// EmbeddingBackward scatters rows back; workers own disjoint columns so
// repeated ids never race.
func (be *Backend) EmbeddingBackward(dtable, dout kernels.Buf, ids kernels.IBuf, n, dim int) {
	DT, D, I := dtable.Host, dout.Host, ids.Host[:n]
	be.parallel(dim, 16, func(lo, hi, _ int) {
		for t := 0; t < n; t++ {
			id := int(I[t])
			dst := DT[id*dim+lo : id*dim+hi]
			src := D[t*dim+lo : t*dim+hi]
			for j, v := range src {
				dst[j] += v
			}
		}
	})
}

// RMSNorm normalises each row and scales by w.
func (be *Backend) RMSNorm(out, rstd, x, w kernels.Buf, rows, dim int, eps float32) {
	O, R, X, W := out.Host, rstd.Host, x.Host, w.Host[:dim]
	be.parallel(rows, 32, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			xr := X[r*dim : (r+1)*dim]
			var ss float32
			for _, v := range xr {
				ss += v * v
			}
			s := float32(1 / math.Sqrt(float64(ss/float32(dim)+eps)))
			R[r] = s
			or := O[r*dim : (r+1)*dim]
			for j, v := range xr {
				or[j] = v * s * W[j]
			}
		}
	})
}

// RMSNormBackward accumulates dx (by rows) and dw (by columns).
func (be *Backend) RMSNormBackward(dx, dw, dout, x, w, rstd kernels.Buf, rows, dim int) {
	DX, DW, DO, X, W, R := dx.Host, dw.Host[:dim], dout.Host, x.Host, w.Host[:dim], rstd.Host
	be.parallel(rows, 32, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			xr, gr, dxr := X[r*dim:(r+1)*dim], DO[r*dim:(r+1)*dim], DX[r*dim:(r+1)*dim]
			s := R[r]
			var dot float32
			for j, g := range gr {
				dot += g * W[j] * xr[j]
			}
			c := s * s * s * dot / float32(dim)
			for j, g := range gr {
				dxr[j] += s*g*W[j] - c*xr[j]
			}
		}
	})
	be.parallel(dim, 16, func(lo, hi, _ int) {
		for r := 0; r < rows; r++ {
			s := R[r]
			xr, gr := X[r*dim+lo:r*dim+hi], DO[r*dim+lo:r*dim+hi]
			for j, g := range gr {
				DW[lo+j] += g * xr[j] * s
			}
		}
	})
}

// RoPE rotates pairs (i, i+headDim/2) of every head in place.
func (be *Backend) RoPE(x kernels.Buf, pos kernels.IBuf, cos, sin kernels.Buf, rows, heads, headDim int, inverse bool) {
	X, P, C, S := x.Host, pos.Host[:rows], cos.Host, sin.Host
	half := headDim / 2
	width := heads * headDim
	be.parallel(rows, 32, func(lo, hi, _ int) {
		for r := lo; r < hi; r++ {
			p := int(P[r])
			cs, sn := C[p*half:(p+1)*half], S[p*half:(p+1)*half]
			for h := 0; h < heads; h++ {
				v := X[r*width+h*headDim : r*width+(h+1)*headDim]
				a, b := v[:half], v[half:]
				for i := range a {
					c, s := cs[i], sn[i]
					if inverse {
						s = -s
					}
					x1, x2 := a[i], b[i]
					a[i] = x1*c - x2*s
					b[i] = x2*c + x1*s
				}
			}
		}
	})
}

// SwiGLU: out = silu(g) * u.
func (be *Backend) SwiGLU(out, g, u kernels.Buf, n int) {
	O, G, U := out.Host[:n], g.Host[:n], u.Host[:n]
	be.parallel(n, 4096, func(lo, hi, _ int) {
		for i := lo; i < hi; i++ {
			gv := G[i]
			O[i] = gv / (1 + expf(-gv)) * U[i]
		}
	})
}

// SwiGLUBackward writes dg and du.
func (be *Backend) SwiGLUBackward(dg, du, dout, g, u kernels.Buf, n int) {
	DG, DU, DO, G, U := dg.Host[:n], du.Host[:n], dout.Host[:n], g.Host[:n], u.Host[:n]
	be.parallel(n, 4096, func(lo, hi, _ int) {
		for i := lo; i < hi; i++ {
			gv := G[i]
			sig := 1 / (1 + expf(-gv))
			silu := gv * sig
			DU[i] = DO[i] * silu
			DG[i] = DO[i] * U[i] * sig * (1 + gv*(1-sig))
		}
	})
}

// Add: out = a + b.
func (be *Backend) Add(out, a, b kernels.Buf, n int) {
	O, A, B := out.Host[:n], a.Host[:n], b.Host[:n]
	be.parallel(n, 8192, func(lo, hi, _ int) {
		for i := lo; i < hi; i++ {
			O[i] = A[i] + B[i]
		}
	})
}

// Scale multiplies in place.
func (be *Backend) Scale(x kernels.Buf, s float32, n int) {
	X := x.Host[:n]
	be.parallel(n, 8192, func(lo, hi, _ int) {
		for i := lo; i < hi; i++ {
			X[i] *= s
		}
	})
}

// CrossEntropy computes weighted per-row losses and, with grad, replaces the
// logits by their gradient.
func (be *Backend) CrossEntropy(loss, correct, logits kernels.Buf, targets kernels.IBuf, weights kernels.Buf, rows, vocab int, gradScale float32, grad bool) {
	Lo, Co, X, T, W := loss.Host[:rows], correct.Host[:rows], logits.Host, targets.Host[:rows], weights.Host[:rows]
	be.parallel(rows, 4, func(lo, hi, w int) {
		ws := &be.work[w]
		for r := lo; r < hi; r++ {
			x := X[r*vocab : (r+1)*vocab]
			t := int(T[r])
			if t < 0 {
				Lo[r], Co[r] = 0, 0
				if grad {
					clear(x)
				}
				continue
			}
			mx, arg := x[0], 0
			for j, v := range x {
				if v > mx {
					mx, arg = v, j
				}
			}
			xt := x[t]
			// With grad the exponentials are computed in place: they
			// become the softmax, then the gradient.
			e := x
			if !grad {
				e = ws.scratch(&ws.s3, vocab)
			}
			sum := expShift(e, x, mx)
			lse := mx + float32(math.Log(float64(sum)))
			wt := W[r]
			Lo[r] = wt * (lse - xt)
			Co[r] = 0
			if arg == t {
				Co[r] = 1
			}
			if !grad {
				continue
			}
			sc := wt * gradScale
			f := sc / sum
			for j := range x {
				x[j] *= f
			}
			x[t] -= sc
		}
	})
}

// AdamWStep is torch.optim.AdamW's update: decay, then the Adam step.
func (be *Backend) AdamWStep(p, g, m, v kernels.Buf, n int, h kernels.AdamW) {
	P, G, M, V := p.Host[:n], g.Host[:n], m.Host[:n], v.Host[:n]
	decay := 1 - h.LR*h.WeightDecay
	step := h.LR / h.BC1
	sqrtBC2 := float32(math.Sqrt(float64(h.BC2)))
	be.parallel(n, 8192, func(lo, hi, _ int) {
		for i := lo; i < hi; i++ {
			gi := G[i] * h.GradScale
			mi := h.Beta1*M[i] + (1-h.Beta1)*gi
			vi := h.Beta2*V[i] + (1-h.Beta2)*gi*gi
			M[i], V[i] = mi, vi
			denom := float32(math.Sqrt(float64(vi)))/sqrtBC2 + h.Eps
			P[i] = P[i]*decay - step*mi/denom
		}
	})
}

// SumSquares reduces in float64 per worker, then across workers.
func (be *Backend) SumSquares(x kernels.Buf) float64 {
	return be.reduce(x.Host, func(s []float32) float64 {
		var acc float64
		for _, v := range s {
			acc += float64(v) * float64(v)
		}
		return acc
	})
}

// Sum reduces in float64.
func (be *Backend) Sum(x kernels.Buf) float64 {
	return be.reduce(x.Host, func(s []float32) float64 {
		var acc float64
		for _, v := range s {
			acc += float64(v)
		}
		return acc
	})
}

func (be *Backend) reduce(x []float32, f func([]float32) float64) float64 {
	parts := be.parts
	clear(parts)
	be.parallel(len(x), 1<<14, func(lo, hi, w int) { parts[w] = f(x[lo:hi]) })
	var s float64
	for _, p := range parts[:be.threads] {
		s += p
	}
	return s
}
