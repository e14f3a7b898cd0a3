package main

import (
	"fmt"
	"strings"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

// availableFor is model.Available; tests replace it.
var availableFor = model.Available

// checkMemory runs the memory plan of forward passes (o, Inference) of
// cfg on be before the weights are loaded, and refuses in one line a plan
// that does not fit: what names the buffers, fix says what to lower.
func checkMemory(be kernels.Backend, cfg *model.Config, o model.PlanOptions, what, fix string) error {
	o.Inference = true
	o.Device, o.Matmul = model.PlanDevice(be)
	p, err := model.ComputePlan(cfg, o)
	if err != nil {
		return fmt.Errorf("%v: %s", strings.TrimPrefix(err.Error(), "plan: "), fix)
	}
	avail, source := availableFor(be)
	if avail <= 0 || float64(p.TotalBytes) <= avail {
		return nil
	}
	f := func(n int64) string { return model.FormatBytes(float64(n)) }
	parts := fmt.Sprintf("parameters %s, activations %s", f(p.ParamBytes), f(p.ActivationBytes))
	if p.KVCacheBytes > 0 {
		parts += ", KV cache " + f(p.KVCacheBytes)
	}
	return fmt.Errorf("not enough memory: %s need %s (%s, workspace %s) but %s is available (%s): %s",
		what, f(p.TotalBytes), parts, f(p.WorkspaceBytes), model.FormatBytes(avail), source, fix)
}

// checkScoring is checkMemory for eval's scoring passes: batch rows of
// seqLen tokens, twice as wide for block models (the noisy sequence beside
// the clean one).
func checkScoring(be kernels.Backend, cfg *model.Config, blockSize, batch, seqLen, threads int) error {
	width := seqLen
	if blockSize > 0 {
		width *= 2
	}
	return checkMemory(be, cfg, model.PlanOptions{SeqLen: width, BatchSize: batch, Threads: threads},
		fmt.Sprintf("the weights and activations of %d x %d tokens", batch, width), "lower --batch-size or --seq-len")
}
