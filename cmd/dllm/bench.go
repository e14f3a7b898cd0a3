package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/convert"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
)

func newBenchCmd() *cobra.Command {
	var (
		modelDir, arch, device string
		copies                 string
		mask                   string
		ratio                  float64
		batch, seqLen, steps   int
		warmup, threads        int
		matmul, asJSON         bool
		recompute              bool
		seed                   uint64
		peak                   float64
	)
	cmd := &cobra.Command{
		Use:   "bench (--model DIR | --arch CONFIG.json | --matmul)",
		Short: "Time a training step (tokens/s, TFLOP/s) or matrix products (GFLOP/s)",
		Long: `bench times the conversion's whole training step (masking, forward, weighted
loss, backward, AdamW) for a model directory (--model) or an architecture with
random weights (--arch, e.g. testdata/configs/llama-42m.json), or, with
--matmul, the matrix products of the engine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			be, err := openBackend(device, threads, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer be.Close()
			out := cmd.OutOrStdout()
			if matmul {
				return benchMatmul(cmd, be, asJSON)
			}
			// The flags before the weights are loaded.
			vis := kernels.Visibility{Mode: kernels.Bidirectional}
			switch mask {
			case "bidirectional":
			case "annealed":
				vis = kernels.Visibility{Mode: kernels.Annealed, Ratio: float32(ratio)}
			default:
				return &exitError{2, fmt.Errorf("--mask %q: use bidirectional or annealed", mask)}
			}
			if err := checkCopies(copies); err != nil {
				return err
			}
			// Measured before the weights are allocated: the plan counts them.
			avail, source := availableFor(be)
			var m *model.Model
			switch {
			case modelDir != "":
				m, err = model.Load(modelDir, be)
			case arch != "":
				var cfg *model.Config
				cfg, err = model.LoadConfig(arch)
				if err == nil {
					m = model.New(cfg, be)
					m.InitRandom(seed)
				}
			default:
				return &exitError{2, fmt.Errorf("bench needs --model DIR, --arch CONFIG.json or --matmul")}
			}
			if err != nil {
				return err
			}
			if err := benchCopies(cmd, be, m, copies, batch, seqLen, recompute, avail, source); err != nil {
				return err
			}
			r, err := convert.BenchStepVis(m, batch, seqLen, warmup, steps, seed, vis, recompute)
			if err != nil {
				return err
			}
			mfu := r.TFLOPS / peak
			if asJSON {
				return json.NewEncoder(out).Encode(struct {
					convert.BenchResult
					Mask       string  `json:"mask"`
					PeakTFLOPS float64 `json:"peak_tflops"`
					MFU        float64 `json:"mfu"`
				}{r, mask, peak, mfu})
			}
			params := commas(r.Params)
			if r.ActiveParams != r.Params {
				params += " (" + commas(r.ActiveParams) + " active per token)"
			}
			fmt.Fprintf(out, "%s: %s parameters, batch %d x %d tokens, %d steps after %d warm-up\n",
				r.Backend, params, r.Batch, r.SeqLen, r.Steps, warmup)
			fmt.Fprintf(out, "%.1f ms/step, %.0f tokens/s, %.3f TFLOP/s (6N + attention FLOPs per token)\n",
				r.MsPerStep, r.TokensPerSec, r.TFLOPS)
			if strings.HasPrefix(r.Backend, "cuda") || cmd.Flags().Changed("peak-tflops") {
				fmt.Fprintf(out, "MFU %.1f%% of %g TFLOP/s (--peak-tflops)\n", 100*mfu, peak)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model directory to time")
	f.StringVar(&arch, "arch", "", "config.json of an architecture to time with random weights")
	f.StringVar(&device, "device", "auto", "auto, cpu or cuda")
	f.IntVar(&threads, "threads", 0, "CPU threads (0: all)")
	f.StringVar(&mask, "mask", "bidirectional", "attention of the timed step: bidirectional or annealed")
	f.Float64Var(&ratio, "ratio", 0.5, "the annealed mask's ratio of visible future keys")
	f.IntVar(&batch, "batch", 8, "rows per step")
	f.IntVar(&seqLen, "seq-len", 256, "tokens per row")
	f.IntVar(&steps, "steps", 10, "timed steps")
	f.IntVar(&warmup, "warmup", 2, "untimed steps first")
	f.BoolVar(&matmul, "matmul", false, "time matrix products instead")
	f.StringVar(&copies, "bf16-copies", "auto", "cuda with bf16 matmuls: bf16 copies of the weights made once per step (on), a cast per product (off), auto: on when they fit the free memory")
	f.BoolVar(&recompute, "recompute", false, "recompute each layer before its backward (keep only layer inputs)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.Uint64Var(&seed, "seed", 1, "seed of the random weights and tokens")
	f.Float64Var(&peak, "peak-tflops", 989, "the device's peak TFLOP/s for the MFU (989: H100/H200 dense bf16)")
	return cmd
}

// benchCopies settles --bf16-copies for the timed model as convert does,
// with the plan of 'dllm plan --bench', saying so when auto drops them;
// avail is what was free before the model was loaded, setting a checked
// value (checkCopies).
func benchCopies(cmd *cobra.Command, be kernels.Backend, m *model.Model, setting string, batch, seqLen int, recompute bool, avail float64, source string) error {
	o := convert.Defaults()
	o.BatchSize, o.SeqLen, o.Recompute = batch, seqLen, recompute
	dev, mm := model.PlanDevice(be)
	noCopies, _, note, err := convert.ChooseCopies(setting, func(off bool) (*model.Plan, error) {
		q := o
		q.BF16Copies = map[bool]string{false: "on", true: "off"}[off]
		return model.ComputePlan(m.Cfg, benchPlanOptions(q, dev, mm))
	}, avail, source)
	if err != nil {
		return &exitError{2, err}
	}
	if note != "" {
		fmt.Fprintln(cmd.ErrOrStderr(), note)
	}
	m.SetBF16Copies(!noCopies)
	return nil
}

// matmulShapes are 1024^3 and the products of a training step of the 42M
// llama (d512, ffn 1376, vocab 32000) at 2048 tokens.
var matmulShapes = []struct {
	name    string
	m, n, k int
	tA, tB  bool
}{
	{"1024x1024x1024 NN", 1024, 1024, 1024, false, false},
	{"qkvo fwd 2048x512x512 NT", 2048, 512, 512, false, true},
	{"ffn up fwd 2048x1376x512 NT", 2048, 1376, 512, false, true},
	{"ffn down fwd 2048x512x1376 NT", 2048, 512, 1376, false, true},
	{"ffn dX 2048x512x1376 NN", 2048, 512, 1376, false, false},
	{"ffn dW 1376x512x2048 TN", 1376, 512, 2048, true, false},
	{"lm head 1024x32000x512 NT", 1024, 32000, 512, false, true},
}

func benchMatmul(cmd *cobra.Command, be kernels.Backend, asJSON bool) error {
	out := cmd.OutOrStdout()
	rng := rand.New(rand.NewPCG(1, 2))
	type row struct {
		Shape  string  `json:"shape"`
		GFLOPS float64 `json:"gflops"`
	}
	var rows []row
	for _, s := range matmulShapes {
		host := func(n int) kernels.Buf {
			h := make([]float32, n)
			for i := range h {
				h[i] = float32(rng.NormFloat64())
			}
			b := be.Alloc(n)
			be.Upload(b, h)
			return b
		}
		a, b, c := host(s.m*s.k), host(s.k*s.n), be.Alloc(s.m*s.n)
		be.MatMul(c, a, b, s.m, s.n, s.k, s.tA, s.tB, 0)
		if err := be.Sync(); err != nil {
			return err
		}
		n := 0
		t0 := time.Now()
		for time.Since(t0) < 500*time.Millisecond || n < 3 {
			be.MatMul(c, a, b, s.m, s.n, s.k, s.tA, s.tB, 0)
			n++
			if err := be.Sync(); err != nil {
				return err
			}
		}
		g := 2 * float64(s.m) * float64(s.n) * float64(s.k) * float64(n) / time.Since(t0).Seconds() / 1e9
		rows = append(rows, row{s.name, g})
		be.Free(a)
		be.Free(b)
		be.Free(c)
	}
	if asJSON {
		return json.NewEncoder(out).Encode(rows)
	}
	fmt.Fprintf(out, "%s\n", be.Name())
	for _, r := range rows {
		fmt.Fprintf(out, "%-32s %8.1f GFLOP/s\n", r.Shape, r.GFLOPS)
	}
	return nil
}
