package convert

import (
	"fmt"
	"strings"

	"github.com/dllm-dev/dllm/anneal"
	"github.com/dllm-dev/dllm/model"
)

// PlanOf is the memory plan of a conversion with options o on device ("cpu"
// or "cuda"): the training rows of every stage (L, or [xt ; x0] of 2L under
// a block schedule), the evaluation's rows, parameters, gradients, AdamW.
// LoRA extends it through PlanOptions.Trainable and ExtraTrainable, and on
// the GPU holds the frozen base in bf16 (model.LoadFrozen) unless matmul is
// "fp32" (the precision of the GPU's products; "" is bf16). Full
// fine-tuning there counts the bf16 copies of the weights unless
// --bf16-copies is off (auto plans them: see ChooseCopies).
func PlanOf(cfg *model.Config, o *Options, device, matmul string) (*model.Plan, error) {
	po := model.PlanOptions{SeqLen: o.SeqLen, BatchSize: o.BatchSize, GradAccum: o.GradAccum, Recompute: o.Recompute,
		Device: device, Threads: o.Threads, Matmul: matmul, NoCopies: o.BF16Copies == "off"}
	final := 0
	if o.BlockSchedule != "" {
		stages, err := anneal.ParseSchedule(o.BlockSchedule, o.SeqLen)
		if err != nil {
			return nil, err
		}
		seen := map[int]bool{}
		for _, st := range stages {
			L := o.SeqLen
			if st.Block > 0 {
				L *= 2
			}
			if !seen[L] {
				seen[L] = true
				po.RowLengths = append(po.RowLengths, L)
			}
		}
		final = stages[len(stages)-1].Block
	}
	if o.LoRARank > 0 {
		// A frozen base: the adapters train, with their kept activations.
		lc := o.LoRA(nil)
		if !(lc.Alpha > 0) {
			lc.Alpha = float64(lc.Rank) // no memory of its own
		}
		if err := lc.Validate(); err != nil {
			return nil, err
		}
		po.Trainable = func(string) bool { return false }
		po.FrozenBase = true
		po.ExtraTrainable = lc.TrainableCount(cfg, 1)
		po.ExtraBuffer = lc.BufferLen(cfg, 1)
		L := o.SeqLen
		for _, rl := range po.RowLengths {
			L = max(L, rl)
		}
		po.ExtraActivationBytes = int64(lc.Bytes(cfg, o.BatchSize*L)) - 16*po.ExtraTrainable
		if cfg.TieEmbeddings {
			// The mask row (when trained) of a tied matrix takes the head's
			// gradient from the logits (no fused head), with its scratch.
			po.HeadLogits = true
			po.ExtraActivationBytes += 4 * int64(2*o.BatchSize*L+cfg.Vocab)
		}
	}
	po.EvalRowLength = o.SeqLen
	if final > 0 {
		po.EvalRowLength = 2 * o.SeqLen
	}
	return model.ComputePlan(cfg, po)
}

// availableFor is model.Available; tests replace it.
var availableFor = model.Available

// ChooseCopies resolves --bf16-copies (setting) for a run that plan
// plans with (noCopies false) or without the bf16 copies of its weights,
// on a device with avail bytes free (0: unknown). on and off are as given;
// auto keeps the copies unless the run fits only without them (and plans
// without them when it fits neither way). It returns the choice, its plan,
// and for copies dropped to fit one line saying so.
func ChooseCopies(setting string, plan func(noCopies bool) (*model.Plan, error), avail float64, source string) (noCopies bool, p *model.Plan, note string, err error) {
	noCopies = setting == "off"
	if p, err = plan(noCopies); err != nil || setting != "auto" || p.CopyBytes == 0 || avail <= 0 || float64(p.TotalBytes) <= avail {
		return noCopies, p, "", err
	}
	q, err := plan(true)
	if err != nil {
		return false, p, "", err
	}
	if float64(q.TotalBytes) > avail {
		return true, q, "", nil // refused either way: by the leaner plan
	}
	note = fmt.Sprintf("bf16 copies of the weights: off (--bf16-copies auto): the run needs %s with them, %s without, and %s is %s; each product casts its weight instead (same results, slower)",
		gib(p.TotalBytes), gib(q.TotalBytes), gib(int64(avail)), source)
	return true, q, note, nil
}

// checkFits runs the plan before anything is allocated and refuses, in one
// line, a run that does not fit, naming the options that would. It settles
// --bf16-copies (r.copies) with the same plan.
func (r *run) checkFits(cfg *model.Config) error {
	dev, mm := model.PlanDevice(r.be)
	avail, source := availableFor(r.be)
	noCopies, p, note, err := ChooseCopies(r.opt.BF16Copies, func(off bool) (*model.Plan, error) {
		q := r.opt
		if off {
			q.BF16Copies = "off"
		}
		return PlanOf(cfg, &q, dev, mm)
	}, avail, source)
	if err != nil {
		return err
	}
	if po := (model.PlanOptions{Device: dev, Matmul: mm, FrozenBase: r.opt.LoRARank > 0}); po.CopiesApply() {
		r.copies = map[bool]string{false: "on", true: "off"}[noCopies]
	}
	if note != "" {
		r.logf("%s", note)
	}
	if avail <= 0 || float64(p.TotalBytes) <= avail {
		return nil
	}
	o := r.opt
	if noCopies {
		o.BF16Copies = "off" // auto: the leaner plan, and suggestions without copies
	}
	return badInput("%s", refusal(cfg, &o, dev, mm, p, avail, source))
}

// refusal says what a run needs, what there is, and what would fit.
func refusal(cfg *model.Config, o *Options, dev, mm string, p *model.Plan, avail float64, source string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "not enough memory: the run needs %s (parameters %s, gradients %s, optimizer %s, activations %s, workspace %s; see 'dllm plan') but %s is available (%s)",
		gib(p.TotalBytes), gib(p.ParamBytes), gib(p.GradBytes), gib(p.OptimizerBytes), gib(p.ActivationBytes), gib(p.WorkspaceBytes), gib(int64(avail)), source)
	var fits, not []string
	try := func(name string, q Options) {
		if qp, err := PlanOf(cfg, &q, dev, mm); err == nil {
			s := fmt.Sprintf("%s (%s)", name, gib(qp.TotalBytes))
			if float64(qp.TotalBytes) <= avail {
				fits = append(fits, s)
			} else {
				not = append(not, s)
			}
		}
	}
	if o.BF16Copies == "on" && p.CopyBytes > 0 {
		q := *o
		q.BF16Copies = "off"
		try("--bf16-copies off", q)
	}
	if !o.Recompute {
		q := *o
		q.Recompute = true
		try("--recompute", q)
	}
	for bs := o.BatchSize / 2; bs >= 1; bs /= 2 {
		q := *o
		q.BatchSize, q.GradAccum = bs, o.GradAccum*o.BatchSize/bs
		try(fmt.Sprintf("--batch-size %d --grad-accum %d", bs, q.GradAccum), q)
		if len(fits) > 0 || bs == 1 {
			if !o.Recompute {
				q.Recompute = true
				try(fmt.Sprintf("--recompute --batch-size %d --grad-accum %d", bs, q.GradAccum), q)
			}
			break
		}
	}
	if len(fits) > 0 {
		fmt.Fprintf(&b, ": it fits with %s", strings.Join(fits, ", or "))
	} else {
		if len(not) > 0 {
			fmt.Fprintf(&b, "; still too large with %s", strings.Join(not, " or "))
		}
		b.WriteString(": the parameters, gradients and optimizer state alone need " +
			gib(p.ParamBytes+p.GradBytes+p.OptimizerBytes) + "; train fewer parameters (LoRA, --lora-rank) or use a smaller model or a larger machine")
	}
	return b.String()
}

func gib(n int64) string { return model.FormatBytes(float64(n)) }
