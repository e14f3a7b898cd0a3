package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/kernels/cuda"
	"github.com/dllm-dev/dllm/kernels/kernelcheck"
	"github.com/dllm-dev/dllm/model"
)

// gpucheck is the parity harness for GPU machines that have no Go: every
// op of the CUDA backend against kernels/cpu, then whole training steps of
// small decoders.
func newGPUCheckCmd() *cobra.Command {
	var (
		out, only string
		seed      uint64
		threads   int
		small     bool
	)
	cmd := &cobra.Command{
		Use:    "gpucheck --out DIR",
		Short:  "Check the CUDA backend against the CPU op by op and write DIR/kernels.tsv",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return &exitError{2, fmt.Errorf("gpucheck needs --out DIR")}
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			dev, err := cuda.New(cuda.Options{Matmul: "fp32"})
			if err != nil {
				return fmt.Errorf("gpucheck: %v", err)
			}
			defer dev.Close()
			ref := cpu.New(threads)
			if seed == 0 {
				seed = uint64(time.Now().UnixNano())
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "gpucheck: %s against %s, seed %d\n", dev.Name(), ref.Name(), seed)
			tsv, err := os.Create(filepath.Join(out, "kernels.tsv"))
			if err != nil {
				return err
			}
			defer tsv.Close()
			fmt.Fprintf(tsv, "op\tshape\trel_err\tthreshold\tresult\n")
			var all []kernelcheck.Case
			report := func(c kernelcheck.Case) {
				all = append(all, c)
				res := "PASS"
				if !c.Pass {
					res = "FAIL"
				}
				fmt.Fprintf(w, "%-34s %-52s %10.3g %8.0e  %s\n", c.Op, c.Shape, c.RelErr, c.Threshold, res)
				fmt.Fprintf(tsv, "%s\t%s\t%.6g\t%g\t%s\n", c.Op, c.Shape, c.RelErr, c.Threshold, res)
			}
			fmt.Fprintf(w, "%-34s %-52s %10s %8s  %s\n", "op", "shape", "rel err", "thresh", "result")
			t0 := time.Now()
			if _, err := kernelcheck.Run(ref, dev, kernelcheck.Config{Small: small, Seed: seed, Matmul: "fp32", Only: only}, report); err != nil {
				return err
			}
			if err := dev.SetMatmul("bf16"); err != nil {
				return err
			}
			bf16 := func(c kernelcheck.Case) { c.Op += " (bf16)"; report(c) }
			// bf16 mode: the matmuls, and attention on the tensor cores (head_dim 64, 128).
			if only == "" || strings.Contains("MatMul BF16 Attention HeadLoss", only) {
				if _, err := kernelcheck.Run(ref, dev, kernelcheck.Config{Small: small, Seed: seed + 1, Matmul: "bf16", Only: "^(MatMul|BF16|Attention|HeadLoss)$"}, bf16); err != nil {
					return err
				}
			}
			if err := dev.SetMatmul("fp32"); err != nil {
				return err
			}
			if only == "" || only == "Model" {
				for _, arch := range []string{"llama", "qwen2", "qwen3"} {
					if err := checkTraining(ref, dev, arch, seed, report); err != nil {
						return err
					}
				}
			}
			failed := kernelcheck.Failed(all)
			fmt.Fprintf(w, "gpucheck: %d cases, %d passed, %d failed in %.0fs (table in %s)\n",
				len(all), len(all)-failed, failed, time.Since(t0).Seconds(), filepath.Join(out, "kernels.tsv"))
			if failed > 0 {
				return &exitError{1, fmt.Errorf("gpucheck: %d of %d cases failed", failed, len(all))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "folder for kernels.tsv")
	f.Uint64Var(&seed, "seed", 0, "seed of the random inputs (0: from the clock)")
	f.IntVar(&threads, "threads", 0, "CPU threads of the reference (0: all)")
	f.BoolVar(&small, "small", false, "small shapes only")
	f.StringVar(&only, "only", "", "regular expression on the op groups to run (Model: the training steps)")
	return cmd
}

// tinyConfigs are small decoders of each family for the training-step
// check: GQA, odd sizes, qwen2's biases, qwen3's QK norm, tied embeddings.
var tinyConfigs = map[string]string{
	"llama": `{"model_type": "llama", "hidden_size": 96, "intermediate_size": 200, "num_hidden_layers": 2,
		"num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 1003, "max_position_embeddings": 128,
		"rms_norm_eps": 1e-5, "rope_theta": 10000, "tie_word_embeddings": false}`,
	"qwen2": `{"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
		"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 128,
		"rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": true}`,
	"qwen3": `{"model_type": "qwen3", "hidden_size": 64, "head_dim": 32, "intermediate_size": 160, "num_hidden_layers": 3,
		"num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 777, "max_position_embeddings": 128,
		"rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": true}`,
}

// checkTraining runs three training steps of a random decoder on both
// backends with the same batches: the first step's gradients and the loss
// of every step must agree, and the device must not allocate after the
// first step.
func checkTraining(ref, dev kernels.Backend, arch string, seed uint64, report func(kernelcheck.Case)) error {
	cfg, err := model.ParseConfig([]byte(tinyConfigs[arch]))
	if err != nil {
		return err
	}
	const B, L = 3, 40
	shape := fmt.Sprintf("%s-like, B%d L%d", arch, B, L)
	rm, dm := model.New(cfg, ref), model.New(cfg, dev)
	rm.InitRandom(seed)
	dm.InitRandom(seed)
	rt, dt := convert.NewStepper(rm, B, L), convert.NewStepper(dm, B, L)
	defer rt.Free()
	defer dt.Free()
	rng := rand.New(rand.NewPCG(seed, 5))
	allocs := -1
	var lossErr float64
	for step := 1; step <= 3; step++ {
		vis := kernels.Visibility{Mode: kernels.Annealed, Ratio: 0.3 * float32(step), Seed: rng.Uint64(), DocMask: step == 2}
		b := convert.RandomStepBatch(rng, B, L, cfg.Vocab, 13)
		lr, err := rt.Step(b, vis, step)
		if err != nil {
			return err
		}
		ld, err := dt.Step(b, vis, step)
		if err == nil {
			err = dev.Err()
		}
		if err != nil {
			return fmt.Errorf("training step on %s: %w", dev.Name(), err)
		}
		lossErr = math.Max(lossErr, math.Abs(ld-lr)/math.Abs(lr))
		if math.IsNaN(ld) {
			lossErr = math.NaN()
		}
		if step == 1 {
			rv, dv := make([]float32, rm.Grads.N), make([]float32, dm.Grads.N)
			ref.Download(rv, rm.Grads)
			dev.Download(dv, dm.Grads)
			rel := kernelcheck.RelErr(rv, dv)
			report(kernelcheck.Case{Op: "Training step 1 gradients", Shape: shape, RelErr: rel, Threshold: kernelcheck.TolAttention, Pass: rel <= kernelcheck.TolAttention})
		}
		if c, ok := dev.(*cuda.Backend); ok && step == 2 {
			allocs = c.MemStats().Allocs
		}
	}
	report(kernelcheck.Case{Op: "Training losses (3 steps)", Shape: shape, RelErr: lossErr, Threshold: kernelcheck.TolAttention, Pass: lossErr <= kernelcheck.TolAttention})
	if c, ok := dev.(*cuda.Backend); ok {
		n := float64(c.MemStats().Allocs - allocs)
		report(kernelcheck.Case{Op: "No device allocation in step 3", Shape: shape, RelErr: n, Threshold: 0, Pass: n == 0})
	}
	return nil
}
