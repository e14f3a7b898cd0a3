package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/model"
)

func newPlanCmd() *cobra.Command {
	o := convert.Defaults()
	var device, matmul string
	var bench, asJSON, inference, kvCache bool
	cmd := &cobra.Command{
		Use:   "plan SRC",
		Short: "Memory a conversion needs: parameters, gradients, optimizer, activations, workspace",
		Long: `plan computes, from SRC's config.json alone (a model folder or the file
itself), the memory 'dllm convert' with the same flags allocates: fp32
parameters, gradients and AdamW moments, the peak activations of a training
step (every layer's, or with --recompute only the layer inputs), the
evaluation's, and the backend's workspace. --device cuda plans the GPU
layout (fp32 master weights, bf16 copies of matmul operands, the pool's
size classes; with --lora-rank the frozen base's matrices held once in
bf16, unless --matmul fp32). convert runs the same plan before it
allocates anything.
--bench plans 'dllm bench' (no evaluation buffers). --inference plans
forward passes only (dllm eval's buffers for --batch-size rows of --seq-len
tokens; with --kv-cache also a KV cache of as many positions, as generate
keeps for AR and block-diffusion decoding); generate and eval run the same
plan before loading the weights.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := model.LoadConfig(args[0])
			if err != nil {
				return err
			}
			if o.LoRARank < 0 {
				return &exitError{2, fmt.Errorf("--lora-rank must be >= 0 (0: full fine-tuning)")}
			}
			if o.BatchSize <= 0 || o.SeqLen <= 0 || o.GradAccum <= 0 {
				return &exitError{2, fmt.Errorf("--seq-len, --batch-size and --grad-accum must be positive")}
			}
			if matmul != "bf16" && matmul != "fp32" {
				return &exitError{2, fmt.Errorf("--matmul %q: use bf16 or fp32", matmul)}
			}
			if err := checkCopies(o.BF16Copies); err != nil {
				return err
			}
			if kvCache && !inference {
				return &exitError{2, fmt.Errorf("--kv-cache plans decoding: add --inference")}
			}
			planOf := func(o convert.Options) (*model.Plan, error) {
				switch {
				case inference:
					return model.ComputePlan(cfg, model.PlanOptions{SeqLen: o.SeqLen, BatchSize: o.BatchSize, Inference: true,
						KVCache: kvCache, Device: device, Threads: o.Threads, Matmul: matmul})
				case bench:
					return model.ComputePlan(cfg, benchPlanOptions(o, device, matmul))
				}
				return convert.PlanOf(cfg, &o, device, matmul)
			}
			p, err := planOf(o)
			if err != nil {
				return &exitError{2, err}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(p)
			}
			if inference {
				fmt.Fprintf(out, "%s, %s parameters, forward passes of %d x %d tokens, %s\n", cfg.ModelType, commas(p.Params), o.BatchSize, o.SeqLen, device)
			} else {
				fmt.Fprintf(out, "%s, %s parameters (%s trained), batch %d x %d tokens, grad-accum %d, %s%s\n",
					cfg.ModelType, commas(p.Params), commas(p.Trainable), o.BatchSize, o.SeqLen, o.GradAccum, device, map[bool]string{true: ", recompute"}[o.Recompute])
			}
			for _, r := range p.Rows {
				fmt.Fprintf(out, "  %-12s %12s  %s\n", r.Name, mib(r.Bytes), r.Detail)
			}
			fmt.Fprintf(out, "  %-12s %12s\n", "total", mib(p.TotalBytes))
			if o.BF16Copies == "auto" && p.CopyBytes > 0 && !inference {
				q := o
				q.BF16Copies = "off"
				lean, err := planOf(q)
				if err != nil {
					return &exitError{2, err}
				}
				fmt.Fprintf(out, "  --bf16-copies auto: below %s free on the device the run drops the copies and needs %s (each product casts its weight)\n",
					mib(p.TotalBytes), mib(lean.TotalBytes))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.SeqLen, "seq-len", o.SeqLen, "tokens per row")
	f.IntVar(&o.BatchSize, "batch-size", o.BatchSize, "rows per micro-batch")
	f.IntVar(&o.GradAccum, "grad-accum", o.GradAccum, "micro-batches per optimizer step (no memory of its own)")
	f.BoolVar(&o.Recompute, "recompute", false, "keep only layer inputs, recompute each layer before its backward")
	f.StringVar(&o.BlockSchedule, "block-schedule", "", "block diffusion schedule, as for convert (rows [xt ; x0] of 2 x --seq-len)")
	f.IntVar(&o.LoRARank, "lora-rank", 0, "plan a LoRA run of this rank on a frozen base (0: full fine-tuning)")
	f.Float64Var(&o.LoRADropout, "lora-dropout", 0, "LoRA dropout (its masks take memory)")
	f.StringSliceVar(&o.LoRATargets, "lora-targets", o.LoRATargets, "LoRA: linears that get adapters")
	f.StringVar(&device, "device", "cpu", "cpu or cuda")
	mm := os.Getenv("DLLM_CUDA_MATMUL")
	if mm == "" {
		mm = "bf16"
	}
	f.StringVar(&matmul, "matmul", mm, "cuda: precision of matrix products, bf16 or fp32 (default $DLLM_CUDA_MATMUL, else bf16)")
	f.StringVar(&o.BF16Copies, "bf16-copies", o.BF16Copies, "cuda, full fine-tuning: bf16 copies of the weights (on), a cast per product (off), auto: on when they fit")
	f.IntVar(&o.Threads, "threads", 0, "CPU threads (0: all)")
	f.BoolVar(&bench, "bench", false, "plan 'dllm bench' instead (no evaluation buffers)")
	f.BoolVar(&inference, "inference", false, "plan forward passes only (eval, generate): weights, activations, workspace")
	f.BoolVar(&kvCache, "kv-cache", false, "--inference: add a KV cache of --batch-size x --seq-len positions")
	f.BoolVar(&asJSON, "json", false, "print JSON (total_bytes and each row)")
	return cmd
}

// checkCopies refuses a --bf16-copies that is not auto, on or off.
func checkCopies(setting string) error {
	if setting != "auto" && setting != "on" && setting != "off" {
		return &exitError{2, fmt.Errorf("--bf16-copies %q: use auto, on or off", setting)}
	}
	return nil
}

// benchPlanOptions plan 'dllm bench': a training step without evaluation.
func benchPlanOptions(o convert.Options, device, matmul string) model.PlanOptions {
	return model.PlanOptions{SeqLen: o.SeqLen, BatchSize: o.BatchSize, GradAccum: o.GradAccum,
		Recompute: o.Recompute, Device: device, Threads: o.Threads, Matmul: matmul, NoCopies: o.BF16Copies == "off"}
}

func mib(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
