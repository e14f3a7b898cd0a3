package cuda

import (
	"fmt"
	"math"

	"github.com/dllm-dev/dllm/kernels"
)

// team is the number of threads that share one query (or key) row of the
// attention kernels: each holds 32 dimensions of the head.
func team(headDim int) (int, error) {
	for _, t := range []int{1, 2, 4, 8} {
		if headDim <= 32*t {
			return t, nil
		}
	}
	return 0, fmt.Errorf("cuda: attention head_dim %d above 256 is not supported", headDim)
}

func teamIndex(t int) int {
	switch t {
	case 1:
		return 0
	case 2:
		return 1
	case 4:
		return 2
	}
	return 3
}

func attnCheck(d kernels.AttnDims, vis *kernels.Visibility, docs kernels.IBuf) (int, error) {
	if d.HeadDim <= 0 || d.Heads <= 0 || d.KVHeads <= 0 || d.Heads%d.KVHeads != 0 {
		return 0, fmt.Errorf("cuda: attention with %d heads of %d over %d KV heads", d.Heads, d.HeadDim, d.KVHeads)
	}
	if err := vis.Validate(); err != nil {
		return 0, fmt.Errorf("cuda: %v", err)
	}
	if vis.DocMask && docs.Dev == 0 {
		return 0, fmt.Errorf("cuda: attention with document masking but no document ids")
	}
	return team(d.HeadDim)
}

// mma picks the tensor-core kernels (src/attention_mma.cu: bf16 inputs,
// fp32 accumulation) for head_dim 64 and 128 when matrix products are bf16;
// other sizes, and fp32 mode, use the fp32 team kernels. It returns the
// kernel offset from the _mma64 kernel, or -1.
func (be *Backend) mma(hd int) kernel {
	switch {
	case be.fp32:
		return -1
	case hd == 64:
		return 0
	case hd == 128:
		return 1
	}
	return -1
}

// visParams appends the visibility rule: mode, ratio, seed, block, half,
// docmask.
func visParams(p *params, vis *kernels.Visibility) *params {
	dm := 0
	if vis.DocMask {
		dm = 1
	}
	return p.i32(int(vis.Mode)).f32(vis.Ratio).u64(vis.Seed).i32(vis.Block).i32(vis.Half).i32(dm)
}

// Attention: one team per query, online softmax over tiles of keys (see
// src/attention.cu).
func (be *Backend) Attention(out, lse, q, k, v kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	if be.failed.Load() || d.B <= 0 || d.Lq <= 0 {
		return
	}
	t, err := attnCheck(d, &vis, docs)
	if err != nil {
		be.fail(err)
		return
	}
	qb := 128 / t
	scale := float32(1 / math.Sqrt(float64(d.HeadDim)))
	p := new(params).ptr(out.Dev).ptr(lse.Dev).ptr(q.Dev).ptr(k.Dev).ptr(v.Dev).ptr(docs.Dev).
		i32(d.Lq).i32(d.Lk).i32(d.QOff).i32(d.Stride()).i32(d.Heads).i32(d.KVHeads).i32(d.HeadDim).f32(scale)
	visParams(p, &vis)
	if m := be.mma(d.HeadDim); m >= 0 {
		be.launch(kAttnFwdMMA64+m, dim3{uint32((d.Lq + 63) / 64), uint32(d.Heads), uint32(d.B)}, dim3{128, 1, 1}, p)
		return
	}
	be.launch(kAttnFwd1+kernel(teamIndex(t)), dim3{uint32((d.Lq + qb - 1) / qb), uint32(d.Heads), uint32(d.B)}, dim3{128, 1, 1}, p)
}

// AttentionBackward: D = rowsum(dout*out), then dq per query and dk, dv per
// key (per query head into partials summed over the GQA group).
func (be *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse kernels.Buf, d kernels.AttnDims, vis kernels.Visibility, docs kernels.IBuf) {
	if be.failed.Load() || d.B <= 0 || d.Lq <= 0 {
		return
	}
	t, err := attnCheck(d, &vis, docs)
	if err != nil {
		be.fail(err)
		return
	}
	if d.Lq != d.Lk || d.QOff != 0 {
		be.fail(fmt.Errorf("cuda: AttentionBackward needs Lq == Lk and QOff 0 (got %d, %d, %d)", d.Lq, d.Lk, d.QOff))
		return
	}
	L, hd := d.Lq, d.HeadDim
	rows := d.B * L * d.Heads
	scale := float32(1 / math.Sqrt(float64(hd)))
	D := be.scratch(rows * 4)
	if D == 0 {
		return
	}
	defer be.release(D)
	be.launch(kAttnPrep, grid1(rows), block256, new(params).ptr(D).ptr(dout.Dev).ptr(out.Dev).i64(rows).i32(hd))
	ti := kernel(teamIndex(t))
	kdq, kdkv := kAttnDQ1+ti, kAttnDKV1+ti
	nb := uint32((L + 128/t - 1) / (128 / t))
	if m := be.mma(hd); m >= 0 {
		kdq, kdkv = kAttnDQMMA64+m, kAttnDKVMMA64+m
		nb = uint32((L + 63) / 64)
	}
	grid := dim3{nb, uint32(d.Heads), uint32(d.B)}
	p := new(params).ptr(dq.Dev).ptr(dout.Dev).ptr(q.Dev).ptr(k.Dev).ptr(v.Dev).ptr(lse.Dev).ptr(D).ptr(docs.Dev).
		i32(L).i32(d.Heads).i32(d.KVHeads).i32(hd).f32(scale)
	visParams(p, &vis)
	be.launch(kdq, grid, dim3{128, 1, 1}, p)

	group := d.Heads / d.KVHeads
	n := d.B * L * d.KVHeads * hd
	pk, pv := dk.Dev, dv.Dev
	if group > 1 {
		pk, pv = be.scratch(group*n*4), be.scratch(group*n*4)
		if pk == 0 || pv == 0 {
			return
		}
		defer be.release(pk)
		defer be.release(pv)
	}
	p = new(params).ptr(pk).ptr(pv).ptr(dout.Dev).ptr(q.Dev).ptr(k.Dev).ptr(v.Dev).ptr(lse.Dev).ptr(D).ptr(docs.Dev).
		i32(L).i32(d.Heads).i32(d.KVHeads).i32(hd).f32(scale)
	visParams(p, &vis).i64(n)
	be.launch(kdkv, grid, dim3{128, 1, 1}, p)
	if group > 1 {
		be.launch(kAttnReduce, grid1(n), block256, new(params).ptr(dk.Dev).ptr(dv.Dev).ptr(pk).ptr(pv).i64(n).i32(group))
	}
}
