// Package kernels defines the Backend interface: the handful of ops a
// decoder-only transformer needs, each with its backward, over flat float32
// buffers. kernels/cpu is the reference implementation; kernels/cuda runs the
// same functions on NVIDIA GPUs. This package imports nothing of dllm's.
package kernels

import "fmt"

// Buf is a view of N float32 values owned by a backend: a slice on the CPU,
// a device address on a GPU. Views are cheap values; Slice never copies.
// With Half the view holds N bfloat16 values on the device instead (see
// BF16Weights): only MatMul and HeadLoss read one, as an operand.
type Buf struct {
	Host []float32
	Dev  uintptr
	N    int
	Half bool
}

// Slice returns the view of n values starting at off.
func (b Buf) Slice(off, n int) Buf {
	if off < 0 || n < 0 || off+n > b.N {
		panic(fmt.Sprintf("kernels: slice [%d:%d] of a buffer of %d", off, off+n, b.N))
	}
	s := Buf{N: n, Half: b.Half}
	if b.Host != nil {
		s.Host = b.Host[off : off+n : off+n]
	}
	if b.Dev != 0 {
		s.Dev = b.Dev + uintptr(off)*b.elem()
	}
	return s
}

func (b Buf) elem() uintptr {
	if b.Half {
		return 2
	}
	return 4
}

// IBuf is a view of N int32 values (token ids, targets, positions, document ids).
type IBuf struct {
	Host []int32
	Dev  uintptr
	N    int
}

// Slice returns the view of n values starting at off.
func (b IBuf) Slice(off, n int) IBuf {
	if off < 0 || n < 0 || off+n > b.N {
		panic(fmt.Sprintf("kernels: slice [%d:%d] of an int buffer of %d", off, off+n, b.N))
	}
	s := IBuf{N: n}
	if b.Host != nil {
		s.Host = b.Host[off : off+n : off+n]
	}
	if b.Dev != 0 {
		s.Dev = b.Dev + uintptr(off)*4
	}
	return s
}

// AttnDims describes one attention call. Queries are B*Lq rows of
// Heads*HeadDim values; keys and values are B rows of KStride positions
// (KVHeads*HeadDim values each), of which the first Lk are used. Query i of a
// row sits at position QOff+i of the key row, which is what the visibility
// rule and document ids are evaluated on.
type AttnDims struct {
	B, Lq, Lk int
	QOff      int
	KStride   int // 0 means Lk
	Heads     int
	KVHeads   int
	HeadDim   int
}

// Stride is the number of key positions between consecutive batch rows.
func (d AttnDims) Stride() int {
	if d.KStride == 0 {
		return d.Lk
	}
	return d.KStride
}

// AdamW holds the hyper-parameters of one optimizer update. BC1 and BC2 are
// the bias corrections 1-beta1^t and 1-beta2^t; GradScale multiplies the
// gradient first (global-norm clipping).
type AdamW struct {
	LR, Beta1, Beta2, Eps, WeightDecay float32
	BC1, BC2                           float32
	GradScale                          float32
}

// Backend is one device's implementation of every op. Shapes are given in
// elements; matrices are row-major. Backward ops accumulate (+=) into
// parameter gradients and into the input gradient where the comment says so.
// A backend records its first error and reports it from Err; ops after an
// error are skipped.
type Backend interface {
	Name() string
	Err() error
	Sync() error
	Close() error

	Alloc(n int) Buf
	AllocInt(n int) IBuf
	Free(b Buf)
	FreeInt(b IBuf)
	Upload(dst Buf, src []float32)
	Download(dst []float32, src Buf)
	UploadInt(dst IBuf, src []int32)
	DownloadInt(dst []int32, src IBuf)
	Zero(b Buf)
	Copy(dst, src Buf)

	// MatMul computes C = op(A) op(B) + beta*C with C m x n and op(A) m x k,
	// op(B) k x n; op transposes when the flag is set (A stored k x m, B
	// stored n x k). beta is 0 or 1.
	MatMul(c, a, b Buf, m, n, k int, transA, transB bool, beta float32)
	// AddBias adds bias (cols) to every row of c (rows x cols).
	AddBias(c, bias Buf, rows, cols int)
	// BiasBackward accumulates the column sums of dout into dbias.
	BiasBackward(dbias, dout Buf, rows, cols int)

	// Embedding gathers rows of table (vocab x dim) into out (n x dim).
	Embedding(out, table Buf, ids IBuf, n, dim int)
	// EmbeddingBackward accumulates dout's rows into dtable at ids.
	EmbeddingBackward(dtable, dout Buf, ids IBuf, n, dim int)

	// RMSNorm: out = x / sqrt(mean(x^2) + eps) * w per row; rstd keeps
	// 1/sqrt(mean(x^2)+eps) per row for the backward.
	RMSNorm(out, rstd, x, w Buf, rows, dim int, eps float32)
	// RMSNormBackward accumulates into dx and dw.
	RMSNormBackward(dx, dw, dout, x, w, rstd Buf, rows, dim int)

	// RoPE rotates x (rows x heads*headDim) in place in the rotate_half
	// layout; row r uses position pos[r] of the cos/sin tables (positions x
	// headDim/2). inverse rotates back, which is the backward.
	RoPE(x Buf, pos IBuf, cos, sin Buf, rows, heads, headDim int, inverse bool)

	// Attention: out = softmax(q k^T / sqrt(headDim) under vis) v per head
	// (GQA: query head h reads KV head h / (Heads/KVHeads)); lse keeps the
	// log-sum-exp per (row, query, head): B*Lq*Heads values. docs (B*Lk
	// entries, document id per key position) is used when vis.DocMask.
	Attention(out, lse, q, k, v Buf, d AttnDims, vis Visibility, docs IBuf)
	// AttentionBackward writes dq, dk and dv (not accumulated). Lq == Lk,
	// QOff == 0.
	AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse Buf, d AttnDims, vis Visibility, docs IBuf)

	// SwiGLU: out = silu(g) * u.
	SwiGLU(out, g, u Buf, n int)
	// SwiGLUBackward writes dg and du.
	SwiGLUBackward(dg, du, dout, g, u Buf, n int)
	// Add: out = a + b (out may alias a).
	Add(out, a, b Buf, n int)
	// Scale multiplies x by s in place.
	Scale(x Buf, s float32, n int)

	// CrossEntropy over rows of logits (rows x vocab) against targets (-1 =
	// ignored). loss[r] = weights[r] * CE_r, correct[r] = 1 where the argmax
	// is the target (rows with a target only). With grad the logits are
	// replaced by d(sum loss * gradScale)/dlogits.
	CrossEntropy(loss, correct, logits Buf, targets IBuf, weights Buf, rows, vocab int, gradScale float32, grad bool)

	// AdamWStep updates n parameters in place (decoupled weight decay).
	AdamWStep(p, g, m, v Buf, n int, h AdamW)
	// SumSquares returns the sum of squares of x, accumulated in float64.
	SumSquares(x Buf) float64
	// Sum returns the sum of x in float64.
	Sum(x Buf) float64

	// Mixture-of-experts routing (DESIGN.md §3). A row's kOut assignments
	// are its k chosen experts and, with a shared expert, one more: group
	// index experts, weight sigmoid(shared[r]).

	// RouterTopK: probs (rows x experts) = softmax of logits (rows x
	// experts); topIdx and topW (rows x kOut) the k most probable experts in
	// descending order (ties: the lower index) with their probabilities,
	// divided by their sum when renorm; shared (rows, N == 0 for none) is
	// the shared expert's gate logit.
	RouterTopK(topW, probs Buf, topIdx IBuf, logits, shared Buf, rows, experts, k int, renorm bool)
	// RouterBackward writes dlogits (rows x experts) and dshared (rows, when
	// there is a shared expert) from the gradient dtopW of topW, plus
	// auxGrad[e] added to d(probs[r][e]) of every row (auxGrad.N == 0: none).
	RouterBackward(dlogits, dshared, dtopW, topW, probs Buf, topIdx IBuf, auxGrad Buf, rows, experts, k int, renorm bool)
	// MoEDispatch sorts the rows*kOut assignments by group (expert), stably:
	// offsets (groups+1) are the groups' first slots, slotRow[s] the row of
	// slot s, slotOf[a] the slot of assignment a.
	MoEDispatch(offsets, slotRow, slotOf, topIdx IBuf, rows, kOut, groups int)
	// MoECombine: out[r] (+)= sum_j w[r*kOut+j] y[slotOf[r*kOut+j]] over rows
	// of dim values; w.N == 0 means weights 1; accumulate adds to out.
	MoECombine(out, y, w Buf, slotOf IBuf, rows, kOut, dim int, accumulate bool)
	// MoECombineBackward writes dy[slotOf[a]] = w[a] dout[r] and
	// dw[a] = dout[r] . y[slotOf[a]] for every assignment a of row r.
	MoECombineBackward(dy, dw, dout, y, w Buf, slotOf IBuf, rows, kOut, dim int)
}

// HeadLoss is an optional op of a Backend (kernels/cuda has it): the LM head
// fused with CrossEntropy, so that the logits x W^T (rows x vocab; x is
// rows x hidden, W vocab x hidden) are never all in memory at once. loss
// and correct are CrossEntropy's; with grad, dx = dlogits W (overwritten)
// and, when dW.N > 0, dW += dlogits^T x, dlogits being CrossEntropy's
// gradient. Rows with target -1 add nothing.
type HeadLoss interface {
	HeadLoss(loss, correct, dx, dW, x, W Buf, targets IBuf, weights Buf, rows, hidden, vocab int, gradScale float32, grad bool)
}

// BF16Weights is an optional op of a Backend (kernels/cuda with bf16
// matmuls): read-only matrices held once in bfloat16, half the memory of
// float32. AllocBF16 returns a Half buffer of n values, or ok false where
// products are not made in bf16 (holding a rounded copy would change
// them). Upload rounds float32 values into it to nearest even, as the
// per-product casts do, so a product reading it equals one that casts a
// float32 copy; Copy from a float32 buffer into it rounds the same way on
// the device; Download widens exactly; Free frees it. MatMul accepts it as
// A or B, HeadLoss as W; no other op takes one.
type BF16Weights interface {
	AllocBF16(n int) (b Buf, ok bool)
}

// AdamWBF16 is an optional op of a Backend (kernels/cuda with bf16
// matmuls): AdamWStep that also writes the updated values from the from-th
// on, rounded as Copy into a BF16Weights buffer rounds them, into p16
// (n - from values): the bf16 copy of a weight made by the update itself.
type AdamWBF16 interface {
	AdamWStepBF16(p, g, m, v Buf, n int, h AdamW, p16 Buf, from int)
}

// BF16Cast is an optional op of a Backend (kernels/cuda with bf16 matmuls):
// CastBF16 returns src rounded to bfloat16 in a new Half buffer, the values
// MatMul's own cast of a float32 operand gives, for several products to
// read (as A or B) without each casting it again; Free gives it back. ok is
// false where products are not made in bf16: then the products read src.
type BF16Cast interface {
	CastBF16(src Buf) (b Buf, ok bool)
}
