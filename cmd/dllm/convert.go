package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dllm-dev/dllm/convert"
)

var convertUsage = map[string]string{
	"data":            "training text: .txt / .jsonl files or folders of them (repeat or comma-separate)",
	"out":             "output directory (checkpoints, metrics, final/ export)",
	"text-field":      "JSONL field holding the text",
	"separator":       "document separator in .txt files without <|endoftext|> markers: blank (a blank line), line, single-newline (TinyStories: paragraphs stay together), none",
	"eval-data":       "held-out text (default: the last --eval-fraction of the documents of --data)",
	"eval-fraction":   "fraction of documents held out for evaluation",
	"sft":             "instruction data: JSONL rows with messages (chat template) or prompt+completion; one example per row, the prompt never masked or scored",
	"sft-pad":         "SFT padding after the response: eos (EOS tokens, masked and scored: the model learns to stop) or none (never masked or scored, hidden by the document mask)",
	"chat-template":   "Jinja chat template file for --sft messages (default: SRC's tokenizer_config.json chat_template)",
	"t-range":         "training noise levels LO,HI: t ~ U(LO, HI) (LLaDA 2.0 SFT: 0.3,0.8); evaluation keeps the full range",
	"shift":           "score masked position n with the logits of n-1 (the AR model's next-token head)",
	"weighting":       "per-token loss weight: elbo (1/t), cart (Dream's context-adaptive weights) or uniform",
	"cart-p":          "CART's geometric parameter p",
	"loss-norm":       "normalise the loss by the number of masked tokens (masked) or by B*L (tokens)",
	"t-min":           "smallest noise level t",
	"mask-token":      "mask token string or id (default: the tokenizer's own, else <|mask|> on a spare or new row)",
	"anneal-steps":    "steps over which attention anneals from causal to bidirectional (0: bidirectional at once; default a tenth of --steps, 0 with --block-schedule)",
	"doc-mask":        "attend only within a document in packed rows",
	"block-schedule":  "block diffusion with LLaDA 2.0's block-size schedule SIZE:STEPS,..., e.g. 1:2000,4:2000,32:2000,full:20000,32:4000 (full: plain masked diffusion; sets --steps to the total)",
	"t-per":           "block diffusion: one t per row or per block",
	"embed-noise":     "add Gaussian noise to the embeddings of masked positions for the first N steps (LLaDA 2.0; -1: auto, the first 5% of steps when the mask token's embedding row is nearly zero)",
	"embed-noise-std": "standard deviation of --embed-noise (0: the RMS of the embedding entries)",
	"steps":           "optimizer steps",
	"seq-len":         "tokens per row",
	"batch-size":      "rows per micro-batch",
	"grad-accum":      "micro-batches per optimizer step",
	"recompute":       "keep only each layer's input in the forward and recompute the layer before its backward: less memory, about a third more compute, same results",
	"lr":              "peak learning rate",
	"min-lr":          "final learning rate of cosine / wsd (default lr/10)",
	"warmup":          "linear warm-up steps (default 1% of --steps)",
	"lr-schedule":     "cosine, wsd (warmup-stable-decay) or constant",
	"decay-fraction":  "wsd: fraction of the steps spent decaying",
	"weight-decay":    "AdamW weight decay (matrices only)",
	"beta1":           "AdamW beta1",
	"beta2":           "AdamW beta2",
	"adam-eps":        "AdamW epsilon",
	"clip":            "global gradient-norm clip (0: off)",
	"router-aux-coef": "MoE models: coefficient of the router load-balancing loss (-1: the config's router_aux_loss_coef; 0: off)",
	"seed":            "seed of data order, noise and attention masks",
	"init":            "pretrained (convert the source) or random (same architecture, fresh weights: the baseline)",
	"device":          "auto, cpu or cuda",
	"threads":         "CPU threads (0: all)",
	"dtype":           "dtype of the exported weights: f32, bf16, f16 (default: the source's)",
	"bf16-copies":     "full fine-tuning on CUDA with bf16 matmuls: bf16 copies of the weights made once per step (on, 2 bytes per weight), or a cast per product (off: same results, slower); auto: on when the run fits the device's free memory with them",
	"eval-every":      "evaluate every N steps (default a tenth of --steps; 0: only at start and end)",
	"eval-rows":       "held-out rows per evaluation",
	"eval-mc":         "Monte-Carlo passes per evaluation",
	"save-every":      "checkpoint every N steps (default a fifth of --steps; 0: only at the end)",
	"keep":            "checkpoints to keep",
	"resume":          "continue from the newest checkpoint in --out",
	"force":           "start over in an --out that holds a previous run",
	"quiet":           "no progress line",
}

func newConvertCmd() *cobra.Command {
	opt := convert.Defaults()
	var configFile string
	cmd := &cobra.Command{
		Use:   "convert SRC --data PATH... --out DIR",
		Short: "Convert an AR checkpoint into a masked-diffusion model",
		Long: `convert continues training the autoregressive model in SRC (a Hugging Face
directory: config.json, safetensors, tokenizer.json) with the masked-diffusion
objective while attention is annealed from causal to bidirectional
(DiffuLLaMA), optionally with Dream's CART weights or LLaDA 2.0's block-size
schedule, and exports a diffusion checkpoint to DIR/final.

Every flag can also be set in --config FILE (YAML or JSON, flag names as keys);
the command line wins. SIGINT, SIGTERM and SIGHUP save a checkpoint and exit (130, 143, 129); a
second signal exits at once. --resume continues exactly.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src := ""
			if len(args) == 1 {
				src = args[0]
			}
			if configFile != "" {
				if err := applyConfigFile(cmd, configFile, map[string]*string{"source": &src}); err != nil {
					return &exitError{2, err}
				}
			}
			if src == "" && !opt.Resume {
				return &exitError{2, fmt.Errorf("convert needs the source model directory: dllm convert SRC --data PATH --out DIR")}
			}
			opt.Source = src
			cmd.Flags().Visit(func(f *pflag.Flag) { opt.Set = append(opt.Set, f.Name) })
			be, err := openBackend(opt.Device, opt.Threads, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer be.Close()
			ctx, sig, stop := onSignals(cmd.ErrOrStderr())
			defer stop()
			sum, err := convert.Run(ctx, opt, be, cmd.ErrOrStderr())
			if errors.Is(err, convert.ErrInterrupted) {
				code := signalCode(sig())
				if sum == nil || sum.Checkpoint == "" {
					return &exitError{code, fmt.Errorf("interrupted before the first step: nothing new to save")}
				}
				return &exitError{code, fmt.Errorf("interrupted: checkpoint %s saved; continue with: dllm convert --out %s --resume", sum.Checkpoint, opt.Out)}
			}
			if err != nil {
				return err
			}
			printSummary(cmd, sum)
			return nil
		},
	}
	bindFlags(cmd.Flags(), &opt, convertUsage)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML or JSON file of settings (flag names as keys)")
	return cmd
}

func printSummary(cmd *cobra.Command, s *convert.Summary) {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "converted: %s\n", s.Export)
	fmt.Fprintf(w, "steps %d, %s tokens in %.1fs (%.0f tokens/s), final train loss %.4f\n", s.Steps, commas(s.TokensSeen), s.Seconds, s.TokensPerSec, s.FinalLoss)
	if s.Before != nil && s.After != nil {
		fmt.Fprintf(w, "held-out NELBO %.4f -> %.4f nats/token (ppl bound %.2f -> %.2f)\n", s.Before.NELBO, s.After.NELBO, s.Before.PPLBound, s.After.PPLBound)
		if s.SFT != nil {
			fmt.Fprintf(w, "(per response token: prompts are not scored; %d SFT rows, %d cut at --seq-len, %d dropped)\n", s.SFT.Examples, s.SFT.CutRows, s.SFT.DroppedRows)
		}
		for i, a := range s.After.Accuracy {
			fmt.Fprintf(w, "masked-token accuracy at t=%.2f: %.3f -> %.3f\n", a.T, s.Before.Accuracy[i].Accuracy, a.Accuracy)
		}
	}
}
