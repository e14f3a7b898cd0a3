package model

import (
	"fmt"
	"math"
	"runtime"

	"github.com/dllm-dev/dllm/kernels"
)

// PlanOptions describe the run a memory plan is for: a training step of
// BatchSize rows of SeqLen tokens (a conversion, bench) or, with Inference,
// forward passes only.
type PlanOptions struct {
	SeqLen, BatchSize int
	// GradAccum does not change the memory: micro-batches run one after the
	// other into the same gradient buffer. It is kept for the table.
	GradAccum int
	Recompute bool
	Inference bool
	// Device is "cpu" (the default) or "cuda".
	Device string
	// Threads are the CPU workers (each has its own packing and attention
	// scratch); 0: every core.
	Threads int
	// RowLengths are the row lengths a run trains on, each with its own
	// activations (a block-diffusion schedule trains on [xt ; x0] rows of
	// 2*SeqLen and, in its "full" stages, on rows of SeqLen); nil: SeqLen.
	RowLengths []int
	// KVCache adds, with Inference, a key/value cache of BatchSize rows of
	// SeqLen positions (AR decoding, block-diffusion sampling).
	KVCache bool
	// EvalRowLength, when > 0, adds the inference activations of the
	// run's evaluation (BatchSize rows of that length).
	EvalRowLength int
	// Trainable says whether a tensor is trained (has a gradient and AdamW
	// moments); nil: every tensor. A frozen base (LoRA) answers false.
	Trainable func(name string) bool
	// ExtraTrainable counts trained parameters outside the model's buffer
	// (adapters), with gradients and moments; ExtraActivationBytes what
	// they keep for the backward.
	ExtraTrainable       int64
	ExtraActivationBytes int64
	// ExtraBuffer is the length of the adapters' buffers (ExtraTrainable
	// with each tensor's alignment padding); 0: ExtraTrainable.
	ExtraBuffer int64
	// FrozenBase: the base is loaded by LoadFrozen (LoRA). On CUDA with
	// bf16 matmuls its linears' weights and untied lm_head are held once in
	// bf16; Matmul "fp32" (DLLM_CUDA_MATMUL=fp32) keeps them float32.
	FrozenBase bool
	Matmul     string
	// HeadLogits: training keeps the logits, the fused head-and-loss kernel
	// unused (LoRA training a row of a tied embedding).
	HeadLogits bool
	// NoCopies: full fine-tuning on CUDA with bf16 matmuls without the
	// per-step bf16 copies of the weights (--bf16-copies off): each
	// product casts its weight into the workspace instead.
	NoCopies bool
}

// PlanRow is one line of the plan's table.
type PlanRow struct {
	Name   string `json:"name"`
	Bytes  int64  `json:"bytes"`
	Detail string `json:"detail,omitempty"`
}

// Plan is the memory a run needs, computed from the same tables that size
// the buffers (Config.Tensors, the blocks' activation tables).
type Plan struct {
	Device          string `json:"device"`
	Params          int64  `json:"params"`
	Trainable       int64  `json:"trainable_params"`
	ParamBytes      int64  `json:"param_bytes"`
	GradBytes       int64  `json:"grad_bytes"`
	OptimizerBytes  int64  `json:"optimizer_bytes"`
	ActivationBytes int64  `json:"activation_bytes"`
	KVCacheBytes    int64  `json:"kv_cache_bytes,omitempty"`
	WorkspaceBytes  int64  `json:"workspace_bytes"`
	// CopyBytes are the bf16 copies of the weights within ParamBytes.
	CopyBytes  int64     `json:"bf16_copy_bytes,omitempty"`
	TotalBytes int64     `json:"total_bytes"`
	Rows       []PlanRow `json:"rows"`
}

// maxPlanBytes bounds what a plan counts: beyond it sizes overflow.
const maxPlanBytes = 1 << 60

// ComputePlan plans a run of cfg.
func ComputePlan(cfg *Config, o PlanOptions) (*Plan, error) {
	if o.SeqLen <= 0 || o.BatchSize <= 0 {
		return nil, fmt.Errorf("plan: --seq-len and --batch-size must be positive (got %d and %d)", o.SeqLen, o.BatchSize)
	}
	if o.Device == "" {
		o.Device = "cpu"
	}
	if o.Device != "cpu" && o.Device != "cuda" {
		return nil, fmt.Errorf("plan: unknown device %q: use cpu or cuda", o.Device)
	}
	lens := o.RowLengths
	if len(lens) == 0 {
		lens = []int{o.SeqLen}
	}
	// Bound the products first: the tables count in int.
	longest := max(o.EvalRowLength, o.SeqLen)
	for _, L := range lens {
		longest = max(longest, L)
	}
	T := float64(o.BatchSize) * float64(longest)
	rough := 4 * (float64(cfg.ParamCount())*4 + T*float64(cfg.Layers+2)*float64(cfg.Vocab+12*cfg.Hidden+4*cfg.Intermediate+2*cfg.QDim()))
	if math.IsNaN(rough) || rough > maxPlanBytes || cfg.ParamCount() < 0 {
		return nil, fmt.Errorf("plan: %d x %d tokens of this model (%d layers, vocab %d) cannot be counted, let alone allocated", o.BatchSize, longest, cfg.Layers, cfg.Vocab)
	}

	p := &Plan{Device: o.Device}
	b := newBlocks(cfg)
	for _, t := range paramTable(cfg, &b.Embed, b.Layers, &b.Norm, &b.Head) {
		n := int64(TensorSpec{t.Suffix, t.Shape}.Elements())
		p.Params += n
		if o.Trainable == nil || o.Trainable(t.Suffix) {
			p.Trainable += n
		}
	}
	p.Trainable += o.ExtraTrainable
	// One buffer each, rounded on the GPU to the pool's size class.
	buf := func(n int64) int64 {
		if o.Device == "cuda" && n > 0 {
			return int64(kernels.PoolClass(uint64(n)))
		}
		return n
	}
	var half, copies map[string]bool
	if o.FrozenBase && o.Device == "cuda" && o.Matmul != "fp32" {
		half = halfTensors(cfg, b)
	}
	// Full fine-tuning there keeps bf16 copies of the same weights (and of a
	// tied head's matrix) for the products, made once per step.
	if o.CopiesApply() && !o.NoCopies {
		copies = copyTensors(cfg, b)
	}
	// The buffers' lengths as the model lays them out (each tensor at an
	// aligned offset, newModel, enableCopies, EnableGrads) and the counts.
	var fp32Len, halfLen, copyLen, gradLen int
	var halfN, copyN int64
	for _, s := range cfg.Tensors() {
		k := s.Elements()
		if half[s.Name] {
			pack(&halfLen, k)
			halfN += int64(k)
		} else {
			pack(&fp32Len, k)
		}
		if copies[s.Name] {
			pack(&copyLen, k)
			copyN += int64(k)
		}
		if o.Trainable == nil || o.Trainable(s.Name) {
			pack(&gradLen, k)
		}
	}
	extraLen := o.ExtraBuffer
	if extraLen == 0 {
		extraLen = o.ExtraTrainable
	}
	trainLen := int64(gradLen) + extraLen
	p.ParamBytes = buf(4*int64(fp32Len)) + buf(2*int64(halfLen)) + buf(4*extraLen)
	if copies != nil {
		half = copies // the products read them: no per-call casts
	}
	switch {
	case halfN > 0:
		p.add("parameters", p.ParamBytes, fmt.Sprintf("frozen base: %s bf16 (the linears' weights and lm_head, held once in bf16), %s fp32 (embedding, norms, biases); adapters %s fp32",
			fmtCount(halfN), fmtCount(p.Params-halfN), fmtCount(o.ExtraTrainable)))
	case o.FrozenBase:
		what := "frozen base"
		if o.Device == "cuda" {
			what += ", held fp32 with fp32 matmuls"
		}
		p.add("parameters", p.ParamBytes, fmt.Sprintf("%s fp32 (%s); adapters %s fp32", fmtCount(p.Params), what, fmtCount(o.ExtraTrainable)))
	case o.Inference:
		p.add("parameters", p.ParamBytes, fmt.Sprintf("%s fp32", fmtCount(p.Params)))
	case o.CopiesApply() && o.NoCopies:
		p.add("parameters", p.ParamBytes, fmt.Sprintf("%s fp32 (master weights; no bf16 copies of the weights, --bf16-copies off: each product casts its weight)", fmtCount(p.Params)))
	default:
		p.add("parameters", p.ParamBytes, fmt.Sprintf("%s fp32 (master weights)", fmtCount(p.Params)))
	}
	if copyN > 0 {
		p.CopyBytes = buf(2 * int64(copyLen))
		p.ParamBytes += p.CopyBytes
		p.add("parameters", p.CopyBytes, fmt.Sprintf("%s bf16 copies of the weights the matmuls read, made once per step after AdamW", fmtCount(copyN)))
	}
	if !o.Inference {
		p.GradBytes = buf(4 * trainLen)
		p.OptimizerBytes = 2 * buf(4*trainLen)
		p.add("gradients", p.GradBytes, fmt.Sprintf("%s trainable fp32", fmtCount(p.Trainable)))
		p.add("optimizer", p.OptimizerBytes, "AdamW first and second moments, fp32")
	}

	ao := ActOptions{Training: !o.Inference, Recompute: o.Recompute && !o.Inference}
	pool := o.Device == "cuda"
	for _, L := range lens {
		n := activationBytes(cfg, b.Layers, o.BatchSize, L, ao, pool, pool && !o.HeadLogits)
		p.ActivationBytes += n
		what := "training"
		if o.Inference {
			what = "forward"
		}
		detail := fmt.Sprintf("%s, %d x %d tokens", what, o.BatchSize, L)
		if ao.Recompute {
			detail += ", layer inputs only (recompute)"
		}
		p.add("activations", n, detail)
	}
	if o.EvalRowLength > 0 && !o.Inference {
		n := activationBytes(cfg, b.Layers, o.BatchSize, o.EvalRowLength, ActOptions{}, pool, false)
		p.ActivationBytes += n
		p.add("activations", n, fmt.Sprintf("evaluation, %d x %d tokens", o.BatchSize, o.EvalRowLength))
	}
	if o.ExtraActivationBytes > 0 {
		p.ActivationBytes += o.ExtraActivationBytes
		p.add("activations", o.ExtraActivationBytes, "adapters")
	}

	if o.KVCache && o.Inference {
		// Model.NewKVCache: one K and one V buffer per layer.
		n := int64(o.BatchSize) * int64(o.SeqLen) * int64(cfg.KVDim()) * 4
		p.KVCacheBytes = 2 * int64(cfg.Layers) * buf(n)
		p.add("kv cache", p.KVCacheBytes, fmt.Sprintf("keys and values of %d x %d positions, fp32", o.BatchSize, o.SeqLen))
	}

	if o.Device == "cpu" {
		threads := o.Threads
		if threads <= 0 {
			threads = runtime.NumCPU()
		}
		p.WorkspaceBytes = cpuWorkspaceBytes(threads, longest)
		p.add("workspace", p.WorkspaceBytes, fmt.Sprintf("GEMM packing and attention scores of %d workers, visibility mask", threads))
	} else {
		copies, cached := bf16CopyBytes(cfg, b, o.BatchSize*longest, &o, half)
		p.WorkspaceBytes = cached
		detail := fmt.Sprintf("bf16 copies of matmul operands (at most %s at once)", FormatBytes(float64(copies)))
		if len(half) > 0 {
			detail = fmt.Sprintf("bf16 copies of matmul activations (at most %s at once; the bf16 weights need none)", FormatBytes(float64(copies)))
		}
		switch {
		case o.Matmul == "fp32" && o.Inference:
			detail = "fp32 matmuls: no bf16 copies"
		case o.Matmul == "fp32":
			detail = "fp32 matmuls: no bf16 copies; the fused LM-head loss's logit chunk"
		case !o.Inference:
			detail += ", the fused LM-head loss's logit chunk and bf16 copies"
		}
		p.add("workspace", cached, detail+"; cached by the pool per size class")
	}
	p.TotalBytes = p.ParamBytes + p.GradBytes + p.OptimizerBytes + p.ActivationBytes + p.KVCacheBytes + p.WorkspaceBytes
	return p, nil
}

// CopiesApply reports whether the run would keep bf16 copies of its
// weights: full fine-tuning on CUDA with bf16 matmuls.
func (o *PlanOptions) CopiesApply() bool {
	return !o.FrozenBase && !o.Inference && o.Device == "cuda" && o.Matmul != "fp32"
}

func (p *Plan) add(name string, n int64, detail string) {
	p.Rows = append(p.Rows, PlanRow{name, n, detail})
}

// activationBytes is what NewActivationsWith allocates for B rows of L
// tokens: the float arena of actTable, the int arena and the host staging.
// With pool, every buffer is rounded up to the CUDA pool's size class.
func activationBytes(c *Config, layers []*Layer, B, L int, o ActOptions, pool, fused bool) int64 {
	T := B * L
	// On the GPU training fuses the LM head with the loss (kernels.HeadLoss):
	// no logits buffer.
	a := &Activations{T: T, Opt: o, fused: fused && o.Training}
	top := a.topActs(c)
	var floats int64
	for _, r := range actTable(c, layers, T, o, top) {
		floats += int64(r.size())
	}
	dev := 4*floats + 4*5*int64(T) // the float and the int arena
	if pool {
		dev = int64(kernels.PoolClass(uint64(4*floats))) + int64(kernels.PoolClass(uint64(4*5*T)))
	}
	host := 4 * 8 * int64(T) // IDs, Pos, Docs, Rows, Targets, Weights, row losses and hits
	return dev + host
}

// cpuWorkspaceBytes mirrors kernels/cpu's per-worker buffers: an A panel
// (96 x 256), a B panel (1024 x 256) and, for attention over rows of L
// positions, two L x L score matrices and a row of scales; one shared B
// panel; the cached visibility mask (L x L bools).
func cpuWorkspaceBytes(threads, L int) int64 {
	perWorker := int64(96*256+1024*256) + 2*int64(L)*int64(L) + int64(L)
	return 4*(int64(threads)*perWorker+1024*256) + int64(L)*int64(L)
}

// bf16CopyBytes lists the bf16 operand copies alive at once in one step
// (each linear block's forward: its input, cast by the product or shared
// by a group, and its weight; training, the input-gradient product: the
// output gradient, cast once for both products unless frozen, the weight
// and a group's shared input; the weight-gradient product: the output
// gradient and the input) and returns the largest such set and what the
// pool keeps cached: per size class the most blocks of it alive at once.
// A weight in half (held in bf16) needs no copy.
func bf16CopyBytes(c *Config, b *blocks, T int, o *PlanOptions, half map[string]bool) (largest, cached int64) {
	training, frozen, fp32 := !o.Inference, o.FrozenBase, o.Matmul == "fp32"
	need := map[uint64]int{}
	live := func(sizes ...int) {
		count := map[uint64]int{}
		var sum uint64
		for _, n := range sizes {
			cl := kernels.PoolClass(uint64(n))
			count[cl]++
			sum += cl
		}
		largest = max(largest, int64(sum))
		for cl, k := range count {
			need[cl] = max(need[cl], k)
		}
	}
	lin := func(l *Linear, rows int, w16, shared bool) {
		if fp32 {
			return
		}
		x, dout, w := rows*l.In*2, rows*l.Out*2, l.Out*l.In*2
		withW := func(s ...int) []int {
			if !w16 {
				s = append(s, w)
			}
			return s
		}
		live(withW(x)...)
		switch {
		case !training:
		case frozen:
			live(withW(dout)...)
		case shared:
			live(withW(dout, x)...)
			live(dout, x)
		default:
			live(withW(dout)...)
			live(dout, x)
		}
	}
	for i, ly := range b.Layers {
		sh := ly.sharedInputs()
		for _, l := range ly.Linears() {
			lin(l, T, half[LayerPrefix(i)+l.Name+".weight"], sh[l])
		}
	}
	headHalf := half[LMHeadName] || half[EmbedName] && c.TieEmbeddings
	if training && !o.HeadLogits {
		// kernels/cuda HeadLoss: logits in chunks of at most 2^25 floats
		// (whole multiples of 128 columns), per-row stats, bf16 x and W
		// (W not when held in bf16) and, when W is trained, the chunk's
		// gradient in bf16 for its two products.
		V, H := c.Vocab, c.Hidden
		cols := kernels.HeadCols(T, V, kernels.HeadChunkFloats)
		sizes := []int{T * cols * 4, T * 5 * 4}
		if !fp32 {
			sizes = append(sizes, T*H*2)
			if !headHalf {
				sizes = append(sizes, V*H*2)
			}
			if !frozen {
				sizes = append(sizes, T*cols*2)
			}
		}
		for _, n := range sizes {
			need[kernels.PoolClass(uint64(n))]++
		}
	} else {
		lin(&b.Head, T, headHalf, false)
	}
	for cl, k := range need {
		cached += int64(cl) * int64(k)
	}
	return largest, cached
}

func fmtCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
