package cuda

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// The prediction of kernels/cuda/NOTES.md: what one training step of `dllm
// bench` (convert.BenchStepVis) asks of the device, counted from the real
// engine and the real Backend on a driver that runs nothing (countDriver),
// and a closed formula (stepFormula) proven equal to the count.

// cost is what some device work must do: launches (kernels, cuBLAS calls,
// memsets), tensor-core FLOPs (cuBLAS bf16 GEMMs and the mma.sync
// attention), other floating-point operations (an estimate per element of
// each kernel's arithmetic), exponentials (ex2.approx, the special-function
// unit), the annealed rule's hashes, and the bytes of device memory read
// and written, each operand once.
type cost struct {
	Launches, MMA, FP32, Exp, Hash, Bytes int64
}

func (c *cost) add(o cost) {
	c.Launches += o.Launches
	c.MMA += o.MMA
	c.FP32 += o.FP32
	c.Exp += o.Exp
	c.Hash += o.Hash
	c.Bytes += o.Bytes
}

func (c cost) times(n int) cost {
	k := int64(n)
	return cost{c.Launches * k, c.MMA * k, c.FP32 * k, c.Exp * k, c.Hash * k, c.Bytes * k}
}

// The cost of each device op from its sizes: what the kernel of src/
// (or the cuBLAS call, memset) reads and writes once, in float32 unless
// said. The FP32 counts are estimates of the arithmetic per element, read
// off the kernels' source; they never set a floor here.
func one(mma, fp32, exp, bytes int) cost {
	return cost{1, int64(mma), int64(fp32), int64(exp), 0, int64(bytes)}
}

// gemmCost is the row-major product C (m x n) = op(A) (m x k) op(B) (k x
// n) + beta C with operands of es bytes and float32 C.
func gemmCost(m, n, k, beta, es int) cost {
	return one(2*m*n*k, 0, 0, es*(m*k+k*n)+4*m*n*(1+beta))
}
func castCost(n int) cost      { return one(0, 0, 0, 6*n) }
func addCost(n int) cost       { return one(0, n, 0, 12*n) }
func swigluCost(n int) cost    { return one(0, 4*n, n, 12*n) }
func swigluBwdCost(n int) cost { return one(0, 9*n, n, 20*n) }
func addBiasCost(rows, cols int) cost {
	return one(0, rows*cols, 0, 8*rows*cols+4*cols)
}
func colsumPartialCost(rows, cols, chunks int, hasB, hasS bool) cost {
	reads := 1 + boolInt(hasB)
	return one(0, rows*cols*(reads+boolInt(hasS)), 0, 4*rows*cols*reads+4*rows*boolInt(hasS)+4*chunks*cols)
}
func colsumFinishCost(chunks, cols int) cost { return one(0, chunks*cols, 0, 4*chunks*cols+8*cols) }
func embedCost(n, dim int) cost              { return one(0, 0, 0, 4*n+8*n*dim) }
func embedBwdCost(n, dim int) cost           { return one(0, n*dim, 0, 4*n+12*n*dim) }
func rmsCost(rows, dim int) cost             { return one(0, 4*rows*dim, 0, 8*rows*dim+4*dim+4*rows) }
func rmsBwdCost(rows, dim int) cost          { return one(0, 8*rows*dim, 0, 16*rows*dim+4*dim+4*rows) }
func ropeCost(rows, heads, hd int) cost {
	// The cos/sin tables (a few positions x hd/2, cached) are left out.
	return one(0, 3*rows*heads*hd, 0, 8*rows*heads*hd+4*rows)
}
func adamwCost(n int) cost { return one(0, 14*n, 0, 28*n) }

// adamwBF16Cost is adamw over n values writing the bf16 copy of the last c.
func adamwBF16Cost(n, c int) cost { return one(0, 14*n, 0, 28*n+2*c) }
func reducePartialCost(n, blocks int) cost {
	return one(0, 2*n, 0, 4*n+8*blocks) // float64 sums
}
func reduceFinishCost(blocks int) cost { return one(0, blocks, 0, 8*blocks+8) }
func memsetCost(n int) cost            { return one(0, 0, 0, 4*n) }
func ceStatsCost(rows, cols int, first bool) cost {
	return one(0, 3*rows*cols, rows*cols, 4*rows*cols+4*rows+16*rows*(2-boolInt(first)))
}
func ceFinishCost(rows int) cost { return one(0, 5*rows, 0, 36*rows) }
func ceGradCost(rows, cols int) cost {
	return one(0, 2*rows*cols, rows*cols, 8*rows*cols+12*rows)
}
func attnPrepCost(rows, hd int) cost { return one(0, 2*rows*hd, 0, 8*rows*hd+4*rows) }

// attnCost is one mma attention kernel over B rows, Lq queries at QOff
// against Lk keys, no tile skipped (bidirectional and annealed rules):
// mmas matrix products of 2·hd FLOPs per (query, key) pair and head (fwd
// 2: S, PV; dq 3: S, dP, dQ; dkv 4: S, dP, dV, dK), fp32 softmax
// arithmetic per pair, one exp per pair, a hash per pair the annealed rule
// does not settle by j <= i; bytes: qRows fp32 buffers of Lq x q_dim and
// kvRows of Lk x kv_dim read or written once, perRow values per query and
// head (lse, D), and out more bytes written (dkv's partials).
func attnCost(B, Lq, Lk, qoff, heads, kvHeads, hd, mode, mmas, fp32 int, qRows, kvRows, perRow, out int) cost {
	pairs := B * heads * Lq * Lk
	c := one(2*mmas*pairs*hd, fp32*pairs, pairs, 4*B*Lq*heads*hd*qRows+4*B*Lk*kvHeads*hd*kvRows+4*B*Lq*heads*perRow+out)
	if mode == int(kernels.Annealed) {
		h := 0
		for i := 0; i < Lq; i++ {
			h += max(0, Lk-(qoff+i+1))
		}
		c.Hash = int64(B * heads * h)
	}
	return c
}

// opRec is one device call the Backend made, under the Backend op that
// made it.
type opRec struct {
	op    string // the kernels.Backend method (countingBackend's label)
	what  string // kernel name, "gemm", "memset", "dtod"
	grid  dim3
	vals  []uint64
	gemm  gemmCall
	bytes uintptr
}

// countDriver is a driver that runs nothing: it hands out addresses and
// records every launch, product, memset and copy, and counts the calls the
// host waits on. Downloads leave the host buffers as they are (zero losses,
// a zero gradient norm): the step's control flow does not depend on them.
type countDriver struct {
	next  uintptr
	label string
	recs  []opRec
	waits hostWaits
}

// hostWaits counts the driver calls the host waits on: uploads, downloads
// and stream syncs.
type hostWaits struct{ htod, dtoh, sync int }

func (d *countDriver) describe() string { return "counting driver" }
func (d *countDriver) malloc(n uintptr) (uintptr, error) {
	if d.next == 0 {
		d.next = 1 << 30
	}
	a := d.next
	d.next += (n + 255) &^ 255
	return a, nil
}
func (d *countDriver) free(uintptr) error { return nil }
func (d *countDriver) htod(uintptr, unsafe.Pointer, uintptr) error {
	d.waits.htod++
	return nil
}
func (d *countDriver) dtoh(unsafe.Pointer, uintptr, uintptr) error {
	d.waits.dtoh++
	return nil
}
func (d *countDriver) dtod(dst, src, n uintptr) error {
	d.recs = append(d.recs, opRec{op: d.label, what: "dtod", bytes: n})
	return nil
}
func (d *countDriver) memset32(dst uintptr, v uint32, n uintptr) error {
	d.recs = append(d.recs, opRec{op: d.label, what: "memset", bytes: 4 * n})
	return nil
}
func (d *countDriver) launch(k kernel, grid, block dim3, p *params) error {
	vals := make([]uint64, p.n)
	for i := 0; i < p.n; i++ {
		o := p.buf[p.off[i]:]
		switch p.kind[i] {
		case 'p', 'q':
			vals[i] = binary.LittleEndian.Uint64(o)
		case 'i':
			vals[i] = uint64(int64(int32(binary.LittleEndian.Uint32(o))))
		default:
			vals[i] = uint64(binary.LittleEndian.Uint32(o))
		}
	}
	d.recs = append(d.recs, opRec{op: d.label, what: k.String(), grid: grid, vals: vals})
	return nil
}
func (d *countDriver) gemm(g *gemmCall) error {
	d.recs = append(d.recs, opRec{op: d.label, what: "gemm", gemm: *g})
	return nil
}
func (d *countDriver) sync() error               { d.waits.sync++; return nil }
func (d *countDriver) record(int) error          { return nil }
func (d *countDriver) elapsed() (float32, error) { return 0, nil }
func (d *countDriver) close() error              { return nil }

// cost of one recorded call, from its arguments alone.
func (r *opRec) cost() (cost, error) {
	v := func(i int) int { return int(int64(r.vals[i])) }
	switch r.what {
	case "gemm":
		es := 4
		if r.gemm.inType == cudaR16BF {
			es = 2
		}
		return gemmCost(r.gemm.m, r.gemm.n, r.gemm.k, int(r.gemm.beta), es), nil
	case "memset":
		return memsetCost(int(r.bytes / 4)), nil
	case "dtod":
		return one(0, 0, 0, 2*int(r.bytes)), nil
	}
	rows := int(r.grid.x)
	switch r.what {
	case "add_f32":
		return addCost(v(3)), nil
	case "swiglu_fwd":
		return swigluCost(v(3)), nil
	case "swiglu_bwd":
		return swigluBwdCost(v(5)), nil
	case "add_bias":
		return addBiasCost(v(2), v(3)), nil
	case "embedding_fwd":
		return embedCost(v(3), v(4)), nil
	case "embedding_bwd":
		return embedBwdCost(v(3), v(4)), nil
	case "adamw":
		return adamwCost(v(4)), nil
	case "adamw_bf16":
		return adamwBF16Cost(v(4), v(4)-v(13)), nil
	case "cast_f32_bf16":
		return castCost(v(2)), nil
	case "rope":
		return ropeCost(v(4), v(5), v(6)), nil
	case "rmsnorm_fwd":
		return rmsCost(v(4), v(5)), nil
	case "rmsnorm_bwd_dx":
		return rmsBwdCost(v(5), v(6)), nil
	case "colsum_partial":
		return colsumPartialCost(v(4), v(5), int(r.grid.y), r.vals[2] != 0, r.vals[3] != 0), nil
	case "colsum_finish":
		return colsumFinishCost(v(2), v(3)), nil
	case "reduce_partial":
		return reducePartialCost(v(2), rows), nil
	case "reduce_finish":
		return reduceFinishCost(v(2)), nil
	case "attn_bwd_prep":
		return attnPrepCost(v(3), v(4)), nil
	case "attn_bwd_reduce":
		n, g := v(4), v(5)
		return one(0, 2*g*n, 0, 8*g*n+8*n), nil
	case "attn_fwd_mma64", "attn_fwd_mma128":
		// out lse q k v docs | Lq Lk QOff Stride Heads KVHeads hd scale | mode ...
		B, Lq, heads, hd := int(r.grid.z), v(6), v(10), v(12)
		return attnCost(B, Lq, v(7), v(8), heads, v(11), hd, v(14), 2, 5, 2, 2, 1, 0), nil
	case "attn_bwd_dq_mma64", "attn_bwd_dq_mma128":
		// dq dout q k v lse D docs | L Heads KVHeads hd scale | mode ...
		B, L := int(r.grid.z), v(8)
		return attnCost(B, L, L, 0, v(9), v(10), v(11), v(13), 3, 4, 3, 2, 2, 0), nil
	case "attn_bwd_dkv_mma64", "attn_bwd_dkv_mma128":
		// pk pv dout q k v lse D docs | L Heads KVHeads hd scale | mode ... n
		B, L, heads, kvh := int(r.grid.z), v(9), v(10), v(11)
		n := v(len(r.vals) - 1)
		return attnCost(B, L, L, 0, heads, kvh, v(12), v(14), 4, 4, 2, 2, 2, 8*(heads/kvh)*n), nil
	case "ce_chunk_stats":
		return ceStatsCost(rows, v(6), v(8) != 0), nil
	case "ce_finish":
		return ceFinishCost(v(9)), nil
	case "ce_chunk_grad":
		return ceGradCost(rows, v(4)), nil
	}
	return cost{}, fmt.Errorf("no cost model for kernel %s (launched by %s)", r.what, r.op)
}

// The categories of NOTES.md, from the Backend op and the device call.
const (
	catGEMM    = "GEMM, layer linears (cuBLAS bf16)"
	catCast    = "cast to bf16 (activations, grads: per product or shared)"
	catHeadMM  = "head: GEMM (LM head, vocab chunks)"
	catHeadCst = "head: casts (x once, dlogits once per chunk)"
	catHeadCE  = "head: CE kernels (stats, finish, grad)"
	catAttnF   = "attention fwd (mma)"
	catAttnB   = "attention bwd (prep, dq, dkv, GQA reduce)"
	catNorm    = "RMSNorm fwd/bwd (+ dw column sums)"
	catRope    = "RoPE fwd/bwd"
	catSwiGLU  = "SwiGLU fwd/bwd"
	catAdd     = "residual adds"
	catBias    = "q/k/v bias add, bias grads"
	catEmbed   = "embedding, row gather/scatter"
	catZero    = "zeroing (grads, dx, dh)"
	catNorm2   = "grad norm (SumSquares)"
	catAdamW   = "AdamW (fp32 p, g, m, v; + the bf16 weight copies)"
	catCopies  = "bf16 weight copies (after AdamW)"
)

var categories = []string{catGEMM, catCast, catHeadMM, catHeadCst, catHeadCE, catAttnF, catAttnB, catNorm, catRope,
	catSwiGLU, catAdd, catBias, catEmbed, catZero, catNorm2, catAdamW, catCopies}

func (r *opRec) category() string {
	switch r.op {
	case "MatMul":
		if r.what == "gemm" {
			return catGEMM
		}
		return catCast
	case "CastBF16":
		return catCast
	case "HeadLoss":
		switch r.what {
		case "gemm":
			return catHeadMM
		case "cast_f32_bf16":
			return catHeadCst
		}
		return catHeadCE
	case "Attention":
		return catAttnF
	case "AttentionBackward":
		return catAttnB
	case "RMSNorm", "RMSNormBackward":
		return catNorm
	case "RoPE":
		return catRope
	case "SwiGLU", "SwiGLUBackward":
		return catSwiGLU
	case "Add":
		return catAdd
	case "AddBias", "BiasBackward":
		return catBias
	case "Embedding", "EmbeddingBackward":
		return catEmbed
	case "Zero":
		return catZero
	case "SumSquares":
		return catNorm2
	case "AdamWStep", "AdamWStepBF16":
		return catAdamW
	case "Copy":
		return catCopies
	}
	return "unlabelled: " + r.op + " " + r.what
}

// countingBackend labels the device calls of every op the training step
// uses (a marker enqueued in stream order before each op), notes each
// step's scored rows, and splits the record into steps at the zeroing of
// the gradients that begins each.
type countingBackend struct {
	*Backend
	d      *countDriver
	gradsN int
	starts []int       // record index of each Zero(gradients)
	waits  []hostWaits // the driver's host waits at each
	rows   []int       // HeadLoss rows of each call
}

func (c *countingBackend) mark(op string) {
	c.Backend.async(func() error { c.d.label = op; return nil })
}
func (c *countingBackend) done() { c.mark("") }

func (c *countingBackend) Zero(b kernels.Buf) {
	if b.N == c.gradsN {
		c.Backend.async(func() error {
			c.starts, c.waits = append(c.starts, len(c.d.recs)), append(c.waits, c.d.waits)
			return nil
		})
	}
	c.mark("Zero")
	c.Backend.Zero(b)
	c.done()
}
func (c *countingBackend) Copy(dst, src kernels.Buf) {
	c.mark("Copy")
	c.Backend.Copy(dst, src)
	c.done()
}
func (c *countingBackend) MatMul(cc, a, b kernels.Buf, m, n, k int, tA, tB bool, beta float32) {
	c.mark("MatMul")
	c.Backend.MatMul(cc, a, b, m, n, k, tA, tB, beta)
	c.done()
}
func (c *countingBackend) CastBF16(src kernels.Buf) (kernels.Buf, bool) {
	c.mark("CastBF16")
	h, ok := c.Backend.CastBF16(src)
	c.done()
	return h, ok
}
func (c *countingBackend) AddBias(cc, bias kernels.Buf, rows, cols int) {
	c.mark("AddBias")
	c.Backend.AddBias(cc, bias, rows, cols)
	c.done()
}
func (c *countingBackend) BiasBackward(db, dout kernels.Buf, rows, cols int) {
	c.mark("BiasBackward")
	c.Backend.BiasBackward(db, dout, rows, cols)
	c.done()
}
func (c *countingBackend) Embedding(out, table kernels.Buf, ids kernels.IBuf, n, dim int) {
	c.mark("Embedding")
	c.Backend.Embedding(out, table, ids, n, dim)
	c.done()
}
func (c *countingBackend) EmbeddingBackward(dt, dout kernels.Buf, ids kernels.IBuf, n, dim int) {
	c.mark("EmbeddingBackward")
	c.Backend.EmbeddingBackward(dt, dout, ids, n, dim)
	c.done()
}
func (c *countingBackend) RMSNorm(out, rstd, x, w kernels.Buf, rows, dim int, eps float32) {
	c.mark("RMSNorm")
	c.Backend.RMSNorm(out, rstd, x, w, rows, dim, eps)
	c.done()
}
func (c *countingBackend) RMSNormBackward(dx, dw, dout, x, w, rstd kernels.Buf, rows, dim int) {
	c.mark("RMSNormBackward")
	c.Backend.RMSNormBackward(dx, dw, dout, x, w, rstd, rows, dim)
	c.done()
}
func (c *countingBackend) RoPE(x kernels.Buf, pos kernels.IBuf, cos, sin kernels.Buf, rows, heads, hd int, inv bool) {
	c.mark("RoPE")
	c.Backend.RoPE(x, pos, cos, sin, rows, heads, hd, inv)
	c.done()
}
func (c *countingBackend) Attention(out, lse, q, k, v kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	c.mark("Attention")
	c.Backend.Attention(out, lse, q, k, v, d, vis, docs)
	c.done()
}
func (c *countingBackend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	c.mark("AttentionBackward")
	c.Backend.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, d, vis, docs)
	c.done()
}
func (c *countingBackend) SwiGLU(out, g, u kernels.Buf, n int) {
	c.mark("SwiGLU")
	c.Backend.SwiGLU(out, g, u, n)
	c.done()
}
func (c *countingBackend) SwiGLUBackward(dg, du, dout, g, u kernels.Buf, n int) {
	c.mark("SwiGLUBackward")
	c.Backend.SwiGLUBackward(dg, du, dout, g, u, n)
	c.done()
}
func (c *countingBackend) Add(out, a, b kernels.Buf, n int) {
	c.mark("Add")
	c.Backend.Add(out, a, b, n)
	c.done()
}
func (c *countingBackend) AdamWStep(p, g, m, v kernels.Buf, n int, h kernels.AdamW) {
	c.mark("AdamWStep")
	c.Backend.AdamWStep(p, g, m, v, n, h)
	c.done()
}
func (c *countingBackend) AdamWStepBF16(p, g, m, v kernels.Buf, n int, h kernels.AdamW, p16 kernels.Buf, from int) {
	c.mark("AdamWStepBF16")
	c.Backend.AdamWStepBF16(p, g, m, v, n, h, p16, from)
	c.done()
}
func (c *countingBackend) SumSquares(x kernels.Buf) float64 {
	c.mark("SumSquares")
	s := c.Backend.SumSquares(x)
	c.done()
	return s
}
func (c *countingBackend) HeadLoss(loss, correct, dx, dW, x, W kernels.Buf, targets kernels.IBuf, weights kernels.Buf, rows, hidden, vocab int, gradScale float32, grad bool) {
	c.rows = append(c.rows, rows)
	c.mark("HeadLoss")
	c.Backend.HeadLoss(loss, correct, dx, dW, x, W, targets, weights, rows, hidden, vocab, gradScale, grad)
	c.done()
}

// stepCount is one counted step: its scored rows, bench's FLOPs (the
// numerator of its MFU), the cost per category, its device calls with their
// costs, and the host's waits from its zeroing of the gradients to the next
// step's (that step's uploads come before it: after this one's Sync).
type stepCount struct {
	k     int
	flops float64
	cats  map[string]cost
	recs  []opRec
	costs []cost
	waits hostWaits
}

// countBench runs `dllm bench`'s step loop (convert.BenchStepVis: warm-up
// steps, then timed ones; bf16 matmuls, bf16 weight copies, no recompute)
// for cfg at B x L on the counting driver and returns each step's count.
func countBench(t *testing.T, cfg *model.Config, B, L, warmup, steps int, vis kernels.Visibility, headChunk int) []stepCount {
	t.Helper()
	d := &countDriver{}
	be, err := newBackend(false, func() (driver, error) { return d, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	be.headChunk = headChunk
	cb := &countingBackend{Backend: be, d: d}
	// No InitRandom: nothing the step launches depends on the values.
	m := model.New(cfg, cb)
	cb.gradsN = m.Layout.Total
	r, err := convert.BenchStepVis(m, B, L, warmup, steps, 1, vis, false)
	if err != nil {
		t.Fatal(err)
	}
	last := d.waits // the last step ended with a Sync: the device thread is idle
	if err := be.Sync(); err != nil {
		t.Fatal(err)
	}
	n := warmup + steps
	// Setup zeroes the gradients (EnableGrads) and AdamW's two moments, of
	// the same size; each step begins by zeroing the gradients.
	if len(cb.starts) != n+3 || len(cb.rows) != n {
		t.Fatalf("%d zeroings of the gradients and %d HeadLoss calls for %d steps", len(cb.starts), len(cb.rows), n)
	}
	var out []stepCount
	for s := 0; s < n; s++ {
		end, to := len(d.recs), last
		if s+4 < len(cb.starts) {
			end, to = cb.starts[s+4], cb.waits[s+4]
		}
		from := cb.waits[s+3]
		sc := stepCount{k: cb.rows[s], flops: r.FlopsPerStep, cats: map[string]cost{}, recs: d.recs[cb.starts[s+3]:end],
			waits: hostWaits{to.htod - from.htod, to.dtoh - from.dtoh, to.sync - from.sync}}
		for i := range sc.recs {
			r := &sc.recs[i]
			c, err := r.cost()
			if err != nil {
				t.Fatal(err)
			}
			cat := r.category()
			if strings.HasPrefix(cat, "unlabelled") {
				t.Fatalf("step %d: a device call outside every counted op: %s", s, cat)
			}
			sc.costs = append(sc.costs, c)
			x := sc.cats[cat]
			x.add(c)
			sc.cats[cat] = x
		}
		out = append(out, sc)
	}
	return out
}

// stepFormula is the closed form of one step of a dense model with tied
// embeddings (Qwen2.5-0.5B's shape): T = B*L tokens, k scored rows, the
// LM head in vocabulary chunks of kernels.HeadCols(T, V, headChunk)
// columns; bf16 matmuls with bf16 copies of every weight the products
// read, no recompute, one AdamW group (decay on everything, as
// convert.Stepper). Read off model.(*Model).Forward/Loss/Backward,
// blocks.go and convert.Stepper.Step; TestStepFormula checks it against
// the count.
func stepFormula(c *model.Config, B, L, k, headChunk int, mode kernels.Mode) map[string]cost {
	T, H, I, V, Ly := B*L, c.Hidden, c.Intermediate, c.Vocab, c.Layers
	nh, nkv, hd := c.Heads, c.KVHeads, c.HeadDim
	Q, KV, g := nh*hd, nkv*hd, nh/nkv
	f := map[string]cost{}
	add := func(cat string, n int, x cost) {
		y := f[cat]
		y.add(x.times(n))
		f[cat] = y
	}
	// Every tensor at a multiple of 8 values (model.Layout).
	al := func(n int) int { return (n + 7) / 8 * 8 }
	bias := boolInt(c.QKVBias)
	layerP := al(H) + al(Q*H) + bias*al(Q) + 2*(al(KV*H)+bias*al(KV)) + al(H*Q) + al(H) + 3*al(I*H)
	P := al(V*H) + Ly*layerP + H // the final norm ends the buffer
	if !c.TieEmbeddings {
		panic("stepFormula: tied embeddings only")
	}
	colsum := func(rows int) (chunks int) {
		chunks = min(max((rows+63)/64, 1), 256)
		chunk := (rows + chunks - 1) / chunks
		return (rows + chunk - 1) / chunk
	}
	ch := colsum(T)

	// The layer linears: forward out = x W^T, backward dx = dout W (added
	// where the layer's input already has a gradient: k, v after q; up
	// after gate) and dW += dout^T x; every fp32 operand (all but the
	// weights' bf16 copies) is cast first, once for the products that
	// share it: each layer input (xn1 for q, k, v; att for o; xn2 for
	// gate, up; act for down) once in the forward and once for the dW
	// products, each output gradient once for its dx and dW.
	for _, l := range []struct{ in, out, acc int }{{H, Q, 0}, {H, KV, 1}, {H, KV, 1}, {Q, H, 0}, {H, I, 0}, {H, I, 1}, {I, H, 0}} {
		add(catGEMM, Ly, gemmCost(T, l.out, l.in, 0, 2))     // forward
		add(catGEMM, Ly, gemmCost(T, l.in, l.out, l.acc, 2)) // dx
		add(catGEMM, Ly, gemmCost(l.out, l.in, T, 1, 2))     // dW
		add(catCast, Ly, castCost(T*l.out))                  // dout
	}
	for _, in := range []int{H, Q, H, I} {
		add(catCast, 2*Ly, castCost(T*in)) // the inputs: forward, dW
	}

	// The head, fused with the loss (kernels/cuda HeadLoss).
	vc := kernels.HeadCols(T, V, headChunk)
	nc := (V + vc - 1) / vc
	remake := boolInt(nc > 1)
	add(catHeadCst, 1, castCost(k*H))
	for c0 := 0; c0 < V; c0 += vc {
		n := min(vc, V-c0)
		add(catHeadMM, 1+remake, gemmCost(k, n, H, 0, 2))
		add(catHeadCE, 1, ceStatsCost(k, n, c0 == 0))
		add(catHeadCE, 1, ceGradCost(k, n))
		add(catHeadCst, 1, castCost(k*n))
		add(catHeadMM, 1, gemmCost(k, H, n, boolInt(c0 > 0), 2)) // dx
		add(catHeadMM, 1, gemmCost(n, H, k, 1, 2))               // dW
	}
	add(catHeadCE, 1, ceFinishCost(k))

	// Attention: forward, and the backward's prep, dq, dkv and GQA reduce.
	m := int(mode)
	add(catAttnF, Ly, attnCost(B, L, L, 0, nh, nkv, hd, m, 2, 5, 2, 2, 1, 0))
	add(catAttnB, Ly, attnPrepCost(T*nh, hd))
	add(catAttnB, Ly, attnCost(B, L, L, 0, nh, nkv, hd, m, 3, 4, 3, 2, 2, 0))
	add(catAttnB, Ly, attnCost(B, L, L, 0, nh, nkv, hd, m, 4, 4, 2, 2, 2, 8*g*T*KV))
	if g > 1 {
		add(catAttnB, Ly, one(0, 2*g*T*KV, 0, 8*g*T*KV+8*T*KV))
	}

	// Norms: two per layer and the final one, forward and backward (dx,
	// then the dw column sums of dout*x*rstd).
	add(catNorm, 2*Ly+1, rmsCost(T, H))
	add(catNorm, 2*Ly+1, rmsBwdCost(T, H))
	add(catNorm, 2*Ly+1, colsumPartialCost(T, H, ch, true, true))
	add(catNorm, 2*Ly+1, colsumFinishCost(ch, H))
	add(catRope, 2*Ly, ropeCost(T, nh, hd))
	add(catRope, 2*Ly, ropeCost(T, nkv, hd))
	add(catSwiGLU, Ly, swigluCost(T*I))
	add(catSwiGLU, Ly, swigluBwdCost(T*I))
	add(catAdd, 2*Ly, addCost(T*H))
	if c.QKVBias {
		for _, n := range []int{Q, KV, KV} {
			add(catBias, Ly, addBiasCost(T, n))
			add(catBias, Ly, colsumPartialCost(T, n, ch, false, false))
			add(catBias, Ly, colsumFinishCost(ch, n))
		}
	}
	// Token embedding, the gather of the scored rows before the head and
	// their scatter back, the embedding's gradient.
	add(catEmbed, 1, embedCost(T, H))
	add(catEmbed, 1, embedCost(k, H))
	add(catEmbed, 1, embedBwdCost(k, H))
	add(catEmbed, 1, embedBwdCost(T, H))

	// The optimizer step: zero the gradients (and the backward's dx and
	// dh), their norm, AdamW over everything writing the bf16 copies: one
	// adamw_bf16 launch up to the end of each run of neighbouring copied
	// tensors (the embedding, and per layer q | k | v | o | gate+up+down
	// with biases between, else qkvo | gate+up+down), a plain adamw for
	// the final norm.
	add(catZero, 1, memsetCost(P))
	add(catZero, 2, memsetCost(T*H))
	blocks := min((P+255)/256, 1024)
	add(catNorm2, 1, reducePartialCost(P, blocks))
	add(catNorm2, 1, reduceFinishCost(blocks))
	runs := []int{2*Q*H + 2*KV*H, 3 * I * H}
	if c.QKVBias {
		runs = []int{Q * H, KV * H, KV * H, H * Q, 3 * I * H}
	}
	opt := adamwCost(P)
	opt.Launches = int64(1 + Ly*len(runs) + 1)
	opt.Bytes += int64(2 * V * H)
	for _, n := range runs {
		opt.Bytes += int64(2 * Ly * n)
	}
	add(catAdamW, 1, opt)
	return f
}

func tinyConfig(t *testing.T, hidden, ffn, layers, heads, kvHeads, vocab int) *model.Config {
	t.Helper()
	c, err := model.ParseConfig([]byte(fmt.Sprintf(`{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
		"hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d, "num_attention_heads": %d,
		"num_key_value_heads": %d, "vocab_size": %d, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
		"rope_theta": 1000000.0, "tie_word_embeddings": true, "hidden_act": "silu"}`, hidden, ffn, layers, heads, kvHeads, vocab)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func qwen05(t *testing.T) *model.Config {
	t.Helper()
	c, err := model.LoadConfig("../../testdata/configs/qwen2.5-0.5b.json")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkFormula(t *testing.T, name string, cfg *model.Config, B, L, headChunk int, vis kernels.Visibility, steps []stepCount) {
	t.Helper()
	hc := headChunk
	if hc == 0 {
		hc = kernels.HeadChunkFloats
	}
	for s, sc := range steps {
		// The host waits on the device for Loss's two downloads, SumSquares'
		// one and the step's closing Sync; the next step's six uploads (ids,
		// positions, docs, rows, targets, weights) follow that Sync.
		want := hostWaits{htod: 6, dtoh: 3, sync: 1}
		if s == len(steps)-1 {
			want.htod = 0
		}
		if sc.waits != want {
			t.Errorf("%s step %d: the host waited %+v, NOTES.md says %+v", name, s+1, sc.waits, want)
		}
	}
	for s, sc := range steps {
		want := stepFormula(cfg, B, L, sc.k, hc, vis.Mode)
		for _, cat := range categories {
			if got := sc.cats[cat]; got != want[cat] {
				t.Errorf("%s step %d (k %d), %s: counted %+v, formula %+v", name, s+1, sc.k, cat, got, want[cat])
			}
		}
		for cat := range sc.cats {
			if _, ok := want[cat]; !ok {
				t.Errorf("%s step %d: counted category %q the formula lacks", name, s+1, cat)
			}
		}
	}
	if t.Failed() {
		t.Log("the training step's device work changed: update stepFormula (kernels/cuda/stepcount_test.go) and the prediction in kernels/cuda/NOTES.md")
	}
}

// TestStepFormula proves stepFormula equal to the count of the real
// engine and Backend, category by category, at two tiny shapes (GQA
// groups 2 and 3; the head in 8 chunks and in one) and at the three shapes
// of scripts/gpu-check (Qwen2.5-0.5B, B4/B8 x L512, B1 x L2048), every
// step (1 warm-up + 2 at the tiny shapes, bench's 2 + 8 at gpu-check's),
// bidirectional and annealed.
func TestStepFormula(t *testing.T) {
	bidir := kernels.Visibility{Mode: kernels.Bidirectional}
	ann := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.5}
	tiny := []struct {
		name                                  string
		hidden, ffn, layers, heads, kv, vocab int
		B, L, headChunk                       int
	}{
		{"tiny A", 128, 256, 2, 2, 1, 1000, 2, 64, 1 << 12},
		{"tiny B", 384, 512, 3, 6, 2, 2048, 1, 96, 0},
	}
	for _, c := range tiny {
		cfg := tinyConfig(t, c.hidden, c.ffn, c.layers, c.heads, c.kv, c.vocab)
		for _, vis := range []kernels.Visibility{bidir, ann} {
			steps := countBench(t, cfg, c.B, c.L, 1, 2, vis, c.headChunk)
			checkFormula(t, c.name, cfg, c.B, c.L, c.headChunk, vis, steps)
		}
	}
	if testing.Short() {
		return
	}
	q := qwen05(t)
	for _, s := range gpuCheckShapes {
		for _, vis := range []kernels.Visibility{bidir, ann} {
			steps := countBench(t, q, s.B, s.L, 2, 8, vis, 0)
			name := fmt.Sprintf("qwen2.5-0.5b B%d x L%d", s.B, s.L)
			checkFormula(t, name, q, s.B, s.L, 0, vis, steps)
			checkProducts(t, name, q, s.B, s.L, steps)
		}
	}
}

// checkProducts checks the counted products against the textbook counts
// bench's MFU is made of: the layer linears 6 x weights x tokens; the head
// 6 k V H over the k scored rows plus 2 k V H for the chunks its backward
// remakes; attention 4 L^2 q_dim per layer and row forward and 14 backward
// (dq 6, dkv 8: both remake S and dP), where the MFU formula counts 12 in
// all.
func checkProducts(t *testing.T, name string, c *model.Config, B, L int, steps []stepCount) {
	t.Helper()
	T, H, Q, KV, I, V := int64(B*L), int64(c.Hidden), int64(c.QDim()), int64(c.KVDim()), int64(c.Intermediate), int64(c.Vocab)
	lw := 2*Q*H + 2*KV*H + 3*I*H
	att := int64(B) * int64(L) * int64(L) * Q * int64(c.Layers)
	for i, sc := range steps {
		k := int64(sc.k)
		for _, x := range []struct {
			cat       string
			got, want int64
		}{
			{catGEMM, sc.cats[catGEMM].MMA, 6 * lw * T * int64(c.Layers)},
			{catHeadMM, sc.cats[catHeadMM].MMA, 8 * k * V * H},
			{catAttnF, sc.cats[catAttnF].MMA, 4 * att},
			{catAttnB, sc.cats[catAttnB].MMA, 14 * att},
		} {
			if x.got != x.want {
				t.Errorf("%s step %d, %s: %d FLOPs counted, %d expected", name, i+1, x.cat, x.got, x.want)
			}
		}
	}
}

// gpuCheckShapes are scripts/gpu-check's GPU_CHECK_SHAPES.
var gpuCheckShapes = []struct{ B, L int }{{4, 512}, {8, 512}, {1, 2048}}

// The ceilings of one H200 (/work/.library/device/KINDS.md, H200.md):
// bf16 dense products as measured on random data, the fp32 datasheet rate,
// the special-function unit (16 results per SM per clock at compute
// capability 9.0, the CUDA C++ Programming Guide's throughput table) and
// int32 (64 per SM per clock) at 132 SMs x 1.98 GHz (the clock read under
// load), and the measured device copy rate. Leads until measured there.
const (
	rateMMA   = 790e12
	rateFP32  = 67e12
	rateExp   = 132 * 16 * 1.98e9
	rateInt   = 132 * 64 * 1.98e9
	rateBytes = 4.3e12
	peakMFU   = 989e12 // the MFU denominator of bench and gpu-check
	// hashOps is the int32 instructions of one hash01 (three 64-bit
	// multiplies, shifts and xors): an estimate, not a count of SASS.
	hashOps = 24
)

// floor is the time an op cannot beat: the largest of its arithmetic
// and memory times.
func (c cost) floor() float64 {
	return max(float64(c.MMA)/rateMMA, float64(c.FP32)/rateFP32, float64(c.Exp)/rateExp,
		float64(c.Hash*hashOps)/rateInt, float64(c.Bytes)/rateBytes)
}

// TestStepPrediction makes the prediction of NOTES.md from the count (per
// category of the step at each gpu-check shape: launches, FLOPs, bytes and
// the floors summed op by op, means of bench's 8 timed steps) and checks
// that NOTES.md holds it as made; DLLM_UPDATE_NOTES=1 rewrites it there.
func TestStepPrediction(t *testing.T) {
	if testing.Short() {
		t.Skip("the Qwen2.5-0.5B count")
	}
	q := qwen05(t)
	var sum, detail strings.Builder
	fmt.Fprintf(&sum, "| shape | mask | k | bench TFLOP | tensor TFLOP | GB | t mma ms | t bytes ms | floor ms | MFU at floor | estimate ms | MFU at estimate | launches |\n")
	fmt.Fprintf(&sum, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range gpuCheckShapes {
		for _, vis := range []kernels.Visibility{{Mode: kernels.Bidirectional}, {Mode: kernels.Annealed, Ratio: 0.5}} {
			steps := countBench(t, q, s.B, s.L, 2, 8, vis, 0)[2:]
			predictionTable(&sum, &detail, q, s.B, s.L, vis, steps)
		}
	}
	text := sum.String() + detail.String()
	const begin, end = "<!-- begin TestStepPrediction -->\n", "<!-- end TestStepPrediction -->"
	notes, err := os.ReadFile("NOTES.md")
	if err != nil {
		t.Fatal(err)
	}
	i, j := strings.Index(string(notes), begin), strings.Index(string(notes), end)
	if i < 0 || j < i {
		t.Fatalf("NOTES.md has no %q ... %q block", strings.TrimSpace(begin), end)
	}
	have := string(notes[i+len(begin) : j])
	if os.Getenv("DLLM_UPDATE_NOTES") == "1" {
		out := string(notes[:i+len(begin)]) + text + string(notes[j:])
		if err := os.WriteFile("NOTES.md", []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if have != text {
		t.Errorf("NOTES.md's prediction is not the count's: DLLM_UPDATE_NOTES=1 go test ./kernels/cuda -run TestStepPrediction rewrites it; the count:\n%s", text)
	}
}

func predictionTable(sum, sb *strings.Builder, c *model.Config, B, L int, vis kernels.Visibility, steps []stepCount) {
	n := float64(len(steps))
	type row struct {
		cost  cost
		floor float64
	}
	rows := map[string]*row{}
	var tot row
	var w [3]float64
	var est, k float64
	for _, sc := range steps {
		k += float64(sc.k) / n
		for i := range sc.recs {
			cat, x := sc.recs[i].category(), sc.costs[i]
			r := rows[cat]
			if r == nil {
				r = &row{}
				rows[cat] = r
			}
			r.cost.add(x)
			r.floor += x.floor()
			tot.cost.add(x)
			tot.floor += x.floor()
			w[2] += float64(x.MMA) / rateMMA / n
		}
		w[0] += whatIf(c, B*L, sc, true, false) / n
		w[1] += whatIf(c, B*L, sc, true, true) / n
		est += estimate(sc) / n
	}
	mode := "bidirectional"
	if vis.Mode == kernels.Annealed {
		mode = "annealed"
	}
	T := B * L
	// bench's own FLOPs (convert.BenchStepVis) and its MFU (cmd/dllm/bench.go).
	flops := steps[0].flops
	mfu := func(t float64) float64 { return 100 * flops / t / peakMFU }
	x, fl := tot.cost, tot.floor/n
	fmt.Fprintf(sum, "| B%d x L%d | %s | %.0f | %.2f | %.2f | %.1f | %.2f | %.2f | %.2f | %.1f%% | %.2f | %.1f%% | %.0f |\n",
		B, L, mode, k, flops/1e12, float64(x.MMA)/n/1e12, float64(x.Bytes)/n/1e9, float64(x.MMA)/n/rateMMA*1e3,
		float64(x.Bytes)/n/rateBytes*1e3, fl*1e3, mfu(fl), est*1e3, mfu(est), float64(x.Launches)/n)

	fmt.Fprintf(sb, "\n#### B%d x L%d, %s (k = %.0f scored rows of %d)\n\n", B, L, mode, k, T)
	fmt.Fprintf(sb, "| category | launches | tensor TFLOP | fp32 GFLOP | exp G | hash G | GB | t mma ms | t bytes ms | floor ms |\n")
	fmt.Fprintf(sb, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	line := func(name string, r *row) {
		x := r.cost
		fmt.Fprintf(sb, "| %s | %.0f | %.3f | %.1f | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f |\n", name,
			float64(x.Launches)/n, float64(x.MMA)/n/1e12, float64(x.FP32)/n/1e9, float64(x.Exp)/n/1e9,
			float64(x.Hash)/n/1e9, float64(x.Bytes)/n/1e9, float64(x.MMA)/n/rateMMA*1e3,
			float64(x.Bytes)/n/rateBytes*1e3, r.floor/n*1e3)
	}
	for _, cat := range categories {
		if r := rows[cat]; r != nil {
			line(cat, r)
		}
	}
	line("**step**", &tot)
	fmt.Fprintf(sb, "\nFloor %.2f ms = %.0f tok/s, MFU %.1f%%. What-if floors: no per-product casts %.2f ms (%.1f%%); "+
		"+ bf16 activations in the elementwise, norm, attention and CE kernels "+
		"%.2f ms (%.1f%%); the products alone %.2f ms (%.1f%%).\n",
		fl*1e3, float64(T)/fl, mfu(fl), w[0]*1e3, mfu(w[0]), w[1]*1e3, mfu(w[1]), w[2]*1e3, mfu(w[2]))
}

// whatIf is the floor of a counted step with some memory traffic removed:
// noCasts drops the per-product casts, each distinct fp32 operand written
// once more in bf16 by its producer instead (2 bytes a value: per layer
// xn1, att, xn2, act forward; both dh, dgate, dup, dq, dk, dv backward;
// the head's x and dlogits); half halves the bytes of the elementwise,
// norm, attention and CE kernels (bf16 activations).
func whatIf(c *model.Config, T int, sc stepCount, noCasts, half bool) float64 {
	H, I, Q, KV, V := c.Hidden, c.Intermediate, c.QDim(), c.KVDim(), c.Vocab
	var t float64
	for i := range sc.recs {
		x := sc.costs[i]
		switch sc.recs[i].category() {
		case catCast, catHeadCst:
			if noCasts {
				continue
			}
		case catNorm, catRope, catSwiGLU, catAdd, catBias, catEmbed, catAttnF, catAttnB, catHeadCE:
			if half {
				x.Bytes /= 2
			}
		}
		t += x.floor()
	}
	if noCasts {
		t += float64(2*T*c.Layers*(2*H+Q+I+2*H+2*I+Q+2*KV)+2*sc.k*(H+V)) / rateBytes
	}
	return t
}

// The efficiencies of estimate: assumptions to be measured, not counts.
const (
	effGEMM  = 0.7
	effAttn  = 0.4
	effBytes = 0.8
)

// estimate is a counted step's time if cuBLAS ran at effGEMM and the mma
// attention at effAttn of the bf16 rate and memory at effBytes of the
// copy rate (the special-function and integer units at their rates).
func estimate(sc stepCount) float64 {
	var t float64
	for i := range sc.recs {
		x := sc.costs[i]
		eff := effGEMM
		if cat := sc.recs[i].category(); cat == catAttnF || cat == catAttnB {
			eff = effAttn
		}
		t += max(float64(x.MMA)/(eff*rateMMA), float64(x.FP32)/rateFP32, float64(x.Exp)/rateExp,
			float64(x.Hash*hashOps)/rateInt, float64(x.Bytes)/(effBytes*rateBytes))
	}
	return t
}
