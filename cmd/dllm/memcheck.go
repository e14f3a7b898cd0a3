package main

import (
	"fmt"
	"strings"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// availableFor is model.Available; tests replace it.
var availableFor = model.Available

// memBudget is the memory a run on be may take, measured before the
// weights are loaded: what a chat's later turns or a server's requests
// plan is checked against the same figure, the weights included.
type memBudget struct {
	be     kernels.Backend
	avail  float64 // 0: unknown, nothing is refused
	source string
}

func budgetOf(be kernels.Backend) memBudget {
	avail, source := availableFor(be)
	return memBudget{be, avail, source}
}

// check runs the memory plan of forward passes (o, Inference) of cfg and
// refuses in one line a plan that does not fit: what names the buffers,
// fix says what to lower.
func (b memBudget) check(cfg *model.Config, o model.PlanOptions, what, fix string) error {
	o.Inference = true
	o.Device, o.Matmul = model.PlanDevice(b.be)
	p, err := model.ComputePlan(cfg, o)
	if err != nil {
		return fmt.Errorf("%v: %s", strings.TrimPrefix(err.Error(), "plan: "), fix)
	}
	if b.avail <= 0 || float64(p.TotalBytes) <= b.avail {
		return nil
	}
	f := func(n int64) string { return model.FormatBytes(float64(n)) }
	parts := fmt.Sprintf("parameters %s, activations %s", f(p.ParamBytes), f(p.ActivationBytes))
	if p.KVCacheBytes > 0 {
		parts += ", KV cache " + f(p.KVCacheBytes)
	}
	return fmt.Errorf("not enough memory: %s need %s (%s, workspace %s) but %s is available (%s): %s",
		what, f(p.TotalBytes), parts, f(p.WorkspaceBytes), model.FormatBytes(b.avail), b.source, fix)
}

// checkScoring is the check of eval's scoring passes: batch rows of seqLen
// tokens, twice as wide for block models (the noisy sequence beside the
// clean one).
func checkScoring(be kernels.Backend, cfg *model.Config, blockSize, batch, seqLen, threads int) error {
	width := seqLen
	if blockSize > 0 {
		width *= 2
	}
	return budgetOf(be).check(cfg, model.PlanOptions{SeqLen: width, BatchSize: batch, Threads: threads},
		fmt.Sprintf("the weights and activations of %d x %d tokens", batch, width), "lower --batch-size or --seq-len")
}

// decoding is what generate, chat, serve and eval's generation tasks
// decode: batch rows of promptLen + genLen tokens, left to right with a KV
// cache (ar) or with the diffusion sampler of info (noCache: a block model
// without its block cache).
type decoding struct {
	ar, noCache                       bool
	info                              diffusion.Info
	batch, promptLen, genLen, threads int
}

// checkDecoding is the check of d's plan: AR, one row with a prefill, a
// step and a KV cache; diffusion, rows of the whole sequence and, with the
// block cache, the cache and rows of one block (an upper bound of the
// prefix and block rows the sampler keeps).
func (b memBudget) checkDecoding(cfg *model.Config, d decoding, fix string) error {
	n := d.promptLen + d.genLen
	o := model.PlanOptions{SeqLen: n, BatchSize: d.batch, Threads: d.threads}
	switch {
	case d.ar:
		o.BatchSize, o.KVCache, o.RowLengths = 1, true, []int{max(d.promptLen, 1), 1}
	case d.info.BlockSize > 0 && !d.noCache:
		o.KVCache, o.RowLengths = true, []int{n, min(d.info.BlockSize, n)}
	}
	what := "the weights and activations"
	if o.KVCache {
		what = "the weights, activations and KV cache"
	}
	return b.check(cfg, o, fmt.Sprintf("%s of %d x %d tokens", what, o.BatchSize, n), fix)
}
