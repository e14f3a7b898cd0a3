package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/corpus"
	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

type evalFlags struct {
	data                        []string
	mode, separator, textField  string
	device, adapter             string
	seqLen, maxTokens, rows, mc int
	batch, threads              int
	evalFraction                float64
	seed                        uint64
	stratified, asJSON          bool
	task                        taskFlags
	sft                         bool
	sftPad                      string
}

func newEvalCmd() *cobra.Command {
	var e evalFlags
	cmd := &cobra.Command{
		Use:   "eval DIR (--data FILE... | --task FILE.jsonl) [--mode ar|diffusion]",
		Short: "Measure a model on text (AR cross-entropy or the diffusion NELBO bound) or on a benchmark task",
		Long: `eval measures a model on text.

--mode ar (the default for a model without a "dllm" block): next-token
cross-entropy in nats/token and perplexity, each document scored on its own
as BOS + text, truncated to --seq-len tokens.

--mode diffusion (the default for a converted model): the Monte-Carlo
masked-diffusion NELBO, an upper bound on the NLL, in nats/token and as a
perplexity bound, over rows of --seq-len tokens packed as 'dllm convert'
packs them (antithetic t, --mc passes, or LLaDA's stratified count), and
the masked-token accuracy at t = 0.15, 0.5 and 0.9. With the same data,
--eval-fraction, --rows, --batch-size, --seq-len, --mc and --seed as a
convert run, it reproduces that run's evaluation. --mode ar with
--eval-fraction scores the same packed held-out rows (positions 1..L-1, the
positions the shifted bound scores), so the two are per-token comparable.

--task FILE.jsonl runs a benchmark. Multiple choice (generic lines
{"context", "choices", "label"}, or HellaSwag, ARC, PIQA, MMLU files):
every choice is scored after its context, tokenised as lm-evaluation-harness
does; --mode ar gives the exact log-likelihood, --mode diffusion the ELBO of
the choice given the clean context (LLaDA's estimator: --mc samples, 32 by
default, LLaDA's stratified count unless --stratified=false; block models
per-block t). Prints accuracy and acc_norm with standard errors. Generation
tasks ({"prompt", "answer"}, GSM8K's shape) decode with the model's sampler
(generate's sampler flags; --mode diffusion takes the ones not given from
generation_config.json; --mode ar: left to right) and score exact match
of --extract. --compare SRC runs the AR source as well and prints both in
one table.

--adapter DIR merges a PEFT LoRA adapter into the model on load, for --data
and --task alike; with --compare SRC it applies to the model only, not to
SRC.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runEval(cmd, args[0], &e) },
	}
	f := cmd.Flags()
	f.StringSliceVar(&e.data, "data", nil, "text: .txt / .jsonl files or folders")
	f.StringVar(&e.mode, "mode", "", "ar or diffusion (default: diffusion for converted models, else ar)")
	f.StringVar(&e.separator, "separator", "blank", "document separator in .txt files (blank, line, single-newline, none)")
	f.StringVar(&e.textField, "text-field", "text", "JSONL field holding the text")
	f.IntVar(&e.seqLen, "seq-len", 0, "tokens per row or document (default: 512, or the model's limit)")
	f.IntVar(&e.maxTokens, "max-tokens", 0, "stop after scoring this many tokens (ar; 0: all)")
	f.IntVar(&e.rows, "rows", 0, "diffusion: rows to evaluate (0: all)")
	f.Float64Var(&e.evalFraction, "eval-fraction", 0, "diffusion: evaluate only the held-out last fraction of the documents, as convert splits them")
	f.IntVar(&e.mc, "mc", 8, "diffusion: Monte-Carlo passes")
	f.BoolVar(&e.stratified, "stratified", false, "diffusion: LLaDA's stratified count of masked tokens instead of Bernoulli(t)")
	f.IntVar(&e.batch, "batch-size", 8, "rows per forward pass")
	f.Uint64Var(&e.seed, "seed", 42, "diffusion: seed of t and the masks")
	f.BoolVar(&e.asJSON, "json", false, "print JSON")
	f.StringVar(&e.device, "device", "auto", "auto, cpu or cuda")
	f.IntVar(&e.threads, "threads", 0, "CPU threads (0: all)")
	addTaskFlags(f, &e.task)
	f.BoolVar(&e.sft, "sft", false, "diffusion: --data is SFT JSONL (messages or prompt+completion), one example per row; prompts are never masked or scored")
	f.StringVar(&e.sftPad, "sft-pad", "none", "--sft: none scores response tokens only (padding unscored and hidden); eos also scores the EOS padding, as SFT training does")
	adapterFlag(f, &e.adapter)
	return cmd
}

func runEval(cmd *cobra.Command, dir string, e *evalFlags) error {
	if e.task.file != "" {
		if len(e.data) > 0 {
			return &exitError{2, fmt.Errorf("give either --data (text) or --task (a benchmark), not both")}
		}
		return runTask(cmd, dir, e)
	}
	if len(e.data) == 0 {
		return &exitError{2, fmt.Errorf("eval needs --data FILE (text or JSONL) or --task FILE.jsonl")}
	}
	ck, err := model.Open(dir, model.OpenOptions{Adapter: e.adapter})
	if err != nil {
		return err
	}
	cfg := ck.Cfg
	if e.mode == "" {
		e.mode = "ar"
		if cfg.DLLM != nil {
			e.mode = "diffusion"
		}
	}
	if e.mode != "ar" && e.mode != "diffusion" {
		return &exitError{2, fmt.Errorf("--mode must be ar or diffusion, got %q", e.mode)}
	}
	if e.mode == "ar" && cfg.DLLM != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "note: %s is a diffusion model; --mode ar scores it as a causal next-token predictor, which is not what it was trained for (use --mode diffusion)\n", dir)
	}
	e.seqLen = evalSeqLen(cfg, e.seqLen)
	var info diffusion.Info
	if e.mode == "diffusion" {
		if info, err = diffusion.InfoFrom(cfg); err != nil {
			return fmt.Errorf("%w; --mode ar measures an AR model", err)
		}
	}
	be, err := openBackend(e.device, e.threads, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer be.Close()
	if err := checkScoring(be, cfg, info.BlockSize, e.batch, e.seqLen, e.threads); err != nil {
		return err
	}
	if err := ck.LoadModel(be); err != nil {
		return err
	}
	m, tok := ck.Model, ck.Tok
	out := cmd.OutOrStdout()
	if e.mode == "ar" && e.evalFraction > 0 {
		return evalARRows(cmd, m, tok, cfg, e)
	}
	if e.mode == "ar" {
		docs, err := corpus.ReadDocuments(e.data, e.separator, e.textField)
		if err != nil {
			return err
		}
		res, err := model.EvalAR(m, tok, docs, model.AREvalOptions{SeqLen: e.seqLen, Batch: e.batch, MaxTokens: e.maxTokens})
		if err != nil {
			return fmt.Errorf("%v in %v", err, e.data)
		}
		if e.asJSON {
			return json.NewEncoder(out).Encode(res)
		}
		fmt.Fprintf(out, "AR cross-entropy %.4f nats/token (perplexity %.3f) over %d tokens in %d documents\n",
			res.CrossEntropy, res.Perplexity, res.Tokens, res.Documents)
		return nil
	}
	var c *corpus.Corpus
	if e.sft {
		if e.sftPad != corpus.PadEOS && e.sftPad != corpus.PadNone {
			return &exitError{2, fmt.Errorf("--sft-pad must be eos or none, got %q", e.sftPad)}
		}
		var ct *tokenizer.ChatTemplate
		if ct, err = tokenizer.LoadChatTemplate(ck.Find("tokenizer_config.json"), e.task.chatTemplate); err != nil { // --chat-template is declared in evaltask.go
			return err
		}
		c, err = corpus.LoadSFT(tok, corpus.SFTOptions{Paths: e.data, EvalFraction: e.evalFraction, SeqLen: e.seqLen,
			Template: ct, TemplateHint: dir, Pad: e.sftPad})
	} else {
		c, err = corpus.Load(tok, corpus.Options{Paths: e.data, EvalFraction: e.evalFraction, Separator: e.separator,
			TextField: e.textField, SeqLen: e.seqLen, BOSAtRowStart: tok.AddsBOS()}, nil)
	}
	if err != nil {
		return err
	}
	split := c.Train
	if e.evalFraction > 0 {
		split = c.Eval
	}
	n := split.Rows()
	if e.rows > 0 {
		n = min(n, e.rows)
	}
	obj := diffusion.Objective{MaskID: info.MaskID, Shift: info.Shift, Weighting: diffusion.ELBO, Norm: diffusion.NormTokens, TMin: 1e-3}
	if t := cfg.DLLM.TMin; t > 0 {
		obj.TMin = t
	}
	// --sft-pad none: the padding is a document of its own, hidden.
	docMask := cfg.DLLM.DocMask || (e.sft && e.sftPad == corpus.PadNone)
	vis := kernels.Visibility{Mode: kernels.Bidirectional, DocMask: docMask}
	if b := info.BlockSize; b > 0 {
		if e.seqLen%b != 0 {
			return fmt.Errorf("--seq-len %d is not a multiple of the model's block size %d", e.seqLen, b)
		}
		vis = kernels.Visibility{Mode: kernels.BlockDiffusion, Block: b, Half: e.seqLen, DocMask: docMask}
	}
	eo := diffusion.EvalOptions{MC: e.mc, Seed: e.seed,
		BatchSize: e.batch, Stratified: e.stratified, Block: info.BlockSize, AccuracyAt: diffusion.DefaultAccuracyAt}
	if e.sft {
		eo.Fixed = split.Fixed
	}
	res, err := diffusion.Evaluate(m, split.Row, n, e.seqLen, obj, vis, eo)
	if err != nil {
		return err
	}
	if e.asJSON {
		return json.NewEncoder(out).Encode(res)
	}
	what := "token"
	if e.sft {
		what = "response token"
		if e.sftPad == corpus.PadEOS {
			what = "response-or-padding token"
		}
	}
	fmt.Fprintf(out, "diffusion NELBO %.4f nats/%s (perplexity bound %.3f) over %d rows x %d tokens (%d scored), %d Monte-Carlo passes\n",
		res.NELBO, what, res.PPLBound, res.Rows, e.seqLen, res.Tokens, res.MC)
	for _, a := range res.Accuracy {
		fmt.Fprintf(out, "masked-token accuracy at t=%.2f: %.4f (%d masked tokens)\n", a.T, a.Accuracy, a.Masked)
	}
	return nil
}

// evalSeqLen is --seq-len, or when not given 512 tokens within the
// model's context.
func evalSeqLen(cfg *model.Config, seqLen int) int {
	if seqLen > 0 {
		return seqLen
	}
	if cfg.MaxPositions > 0 {
		return min(512, cfg.MaxPositions)
	}
	return 512
}
