package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"

	"github.com/dllm-dev/dllm/internal/regfile"
)

type generateFlags struct {
	prompt, promptFile, ids string
	ar, show, stopAtEOS     bool
	noCache, asJSON         bool
	batch, threads          int
	device, adapter         string
	seed                    uint64
	samplerFlags
	// --chat (chat.go)
	chat                 bool
	system, chatTemplate string
}

func newGenerateCmd() *cobra.Command {
	var g generateFlags
	cmd := &cobra.Command{
		Use:   "generate DIR [--prompt TEXT | --prompt-file FILE | stdin]",
		Short: "Sample text from a diffusion model (or, with --ar, from an AR model)",
		Long: `generate decodes from a diffusion checkpoint written by 'dllm convert', the
way its config.json's "dllm" block says it was trained (mask token, shift,
attention rule, block size): the prompt followed by --gen-len mask tokens,
revealed over --steps steps in semi-autoregressive blocks of --block-len.
Defaults come from the model's generation_config.json.

--ar decodes an autoregressive model left to right with a KV cache instead
(greedy at --temperature 0): the check that a source model loaded right.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runGenerate(cmd, args[0], &g) },
	}
	f := cmd.Flags()
	f.StringVar(&g.prompt, "prompt", "", "prompt text")
	f.StringVar(&g.promptFile, "prompt-file", "", "read the prompt from a file")
	f.StringVar(&g.ids, "ids", "", "prompt as comma-separated token ids (prints ids)")
	addDecodeFlags(f, &g)
	f.IntVar(&g.batch, "batch", 1, "samples at once")
	f.BoolVar(&g.stopAtEOS, "stop-at-eos", false, "cut each sample at its first end-of-sequence token")
	f.BoolVar(&g.show, "show", false, "draw the denoising live in the terminal")
	f.BoolVar(&g.asJSON, "json", false, "print JSON")
	f.BoolVar(&g.chat, "chat", false, "render the prompt as a user message with the chat template and its generation prompt; print only the answer, cut at the end of the turn")
	f.StringVar(&g.system, "system", "", "--chat: system message before the prompt")
	f.StringVar(&g.chatTemplate, "chat-template", "", "--chat: Jinja chat template file (default: DIR's tokenizer_config.json)")
	return cmd
}

func readPrompt(cmd *cobra.Command, g *generateFlags) (string, error) {
	switch {
	case g.prompt != "":
		return g.prompt, nil
	case g.promptFile != "":
		b, err := regfile.ReadFile(g.promptFile)
		if err != nil {
			return "", &exitError{2, fmt.Errorf("--prompt-file: %v", unwrapPathError(err))}
		}
		return strings.TrimRight(string(b), "\n"), nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return "", nil
	}
	b, err := io.ReadAll(in)
	return strings.TrimRight(string(b), "\n"), err
}

// parseIDList reads comma-separated token ids.
func parseIDList(s string) ([]int32, error) {
	var out []int32
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		v, err := strconv.Atoi(p)
		if err != nil {
			return nil, &exitError{2, fmt.Errorf("--ids: %q is not an integer", p)}
		}
		out = append(out, int32(v))
	}
	return out, nil
}

func runGenerate(cmd *cobra.Command, dir string, g *generateFlags) error {
	if g.chat {
		return runChatGenerate(cmd, dir, g)
	}
	ck, err := model.Open(dir, model.OpenOptions{NoTokenizer: g.ids != "", Adapter: g.adapter})
	if err != nil {
		// The hint where --ids mends it: all but the tokenizer opens.
		if g.ids == "" {
			if _, e := model.Open(dir, model.OpenOptions{NoTokenizer: true, Adapter: g.adapter}); e == nil {
				return fmt.Errorf("%w (or give the prompt as --ids)", err)
			}
		}
		return err
	}
	g.defaults(cmd, ck.Find("generation_config.json"))
	cfg, tok := ck.Cfg, ck.Tok
	var prompt []int32
	if g.ids != "" {
		if prompt, err = parseIDList(g.ids); err != nil {
			return err
		}
	} else {
		text, err := readPrompt(cmd, g)
		if err != nil {
			return err
		}
		for _, id := range tok.Encode(text, true) {
			prompt = append(prompt, int32(id))
		}
	}
	for _, id := range prompt {
		if id < 0 || int(id) >= cfg.Vocab {
			return &exitError{2, fmt.Errorf("prompt token %d is outside the vocabulary (%d)", id, cfg.Vocab)}
		}
	}
	var info diffusion.Info
	if !g.ar {
		if info, err = diffusion.InfoFrom(cfg); err != nil {
			return err
		}
	}
	if err := g.check(cfg, g.ar, g.batch, len(prompt)); err != nil {
		return err
	}
	be, err := openBackend(g.device, g.threads, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer be.Close()
	if err := budgetOf(be).checkDecoding(cfg, g.decoding(info, len(prompt)), "lower --gen-len or --batch"); err != nil {
		return err
	}
	if err := ck.LoadModel(be); err != nil {
		return err
	}
	m, eos := ck.Model, ck.EOS
	decode := func(ids []int32) string {
		if tok == nil {
			b, _ := json.Marshal(ids)
			return string(b)
		}
		xs := make([]int, len(ids))
		for i, v := range ids {
			xs[i] = int(v)
		}
		return tok.Decode(xs, true)
	}
	var samples [][]int32
	var seconds float64
	var steps, forwards int
	if g.ar {
		var res *model.ARResult
		res, err = m.GenerateAR(prompt, model.AROptions{GenLen: g.genLen, Batch: g.batch, Seed: g.seed,
			Sampling: g.sampling(), StopAtEOS: g.stopAtEOS, EOS: eos})
		if err != nil {
			return err
		}
		samples, seconds = res.Tokens, res.Seconds
		steps = g.genLen
		forwards = g.genLen
	} else {
		opt := g.options()
		opt.Seed, opt.Batch, opt.EOS, opt.StopAtEOS, opt.NoCache = g.seed, g.batch, eos, g.stopAtEOS, g.noCache
		if g.show {
			opt.Observe = showStep(cmd.ErrOrStderr(), tok, info.MaskID, len(prompt))
		}
		s, err := diffusion.NewSampler(m, info, opt)
		if err != nil {
			return err
		}
		defer s.Free()
		res, err := s.Generate(prompt)
		if err != nil {
			return err
		}
		samples, seconds, steps, forwards = res.Tokens, res.Seconds, res.Steps, res.Forward
	}
	out := cmd.OutOrStdout()
	total := 0
	for _, smp := range samples {
		total += len(smp)
	}
	if g.asJSON {
		type sample struct {
			IDs  []int32 `json:"ids"`
			Text string  `json:"text,omitempty"`
		}
		var ss []sample
		for _, smp := range samples {
			s := sample{IDs: smp}
			if tok != nil {
				s.Text = decode(smp)
			}
			ss = append(ss, s)
		}
		return json.NewEncoder(out).Encode(map[string]any{"prompt_ids": prompt, "samples": ss, "seconds": seconds,
			"steps": steps, "forward_passes": forwards})
	}
	for i, smp := range samples {
		if len(samples) > 1 {
			fmt.Fprintf(out, "--- sample %d\n", i+1)
		}
		if tok != nil {
			// Decoded together: a SentencePiece decoder strips the leading
			// space of the first token of each call.
			fmt.Fprintln(out, decode(append(append([]int32(nil), prompt...), smp...)))
		} else {
			fmt.Fprintln(out, decode(smp))
		}
	}
	if seconds > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "%d tokens in %.2fs: %.1f tokens/s, %.1f steps/s (%d steps, %d forward passes)\n",
			total, seconds, float64(total)/seconds, float64(steps)/seconds, steps, forwards)
	}
	return nil
}

// check refuses settings that are not numbers in range and a prompt and
// generation beyond the model's context (generate, chat, eval --task; ar:
// --alg is not used): bad input, exit 2.
func (s *samplerFlags) check(cfg *model.Config, ar bool, batch, promptLen int) error {
	opt := s.options()
	opt.Batch = batch
	if ar {
		opt.Alg = ""
	}
	bad := func(err error) error { return &exitError{2, err} }
	if err := opt.Validate(); err != nil {
		return bad(err)
	}
	if batch <= 0 {
		return bad(fmt.Errorf("--batch must be positive, got %d", batch))
	}
	n := promptLen + s.genLen
	if ctx := cfg.MaxPositions; ctx > 0 {
		if promptLen > ctx {
			return bad(fmt.Errorf("the prompt is %d tokens, longer than the model's context of %d (max_position_embeddings): shorten it", promptLen, ctx))
		}
		if n > ctx {
			return bad(fmt.Errorf("the prompt (%d tokens) and --gen-len %d make %d tokens, beyond the model's context of %d (max_position_embeddings): lower --gen-len to %d or less", promptLen, s.genLen, n, ctx, ctx-promptLen))
		}
	}
	return nil
}

// decoding is what generate decodes after a prompt of promptLen tokens.
func (g *generateFlags) decoding(info diffusion.Info, promptLen int) decoding {
	return decoding{ar: g.ar, noCache: g.noCache, info: info, batch: g.batch, promptLen: promptLen, genLen: g.genLen, threads: g.threads}
}

// showStep redraws the sample of row 0 after every step: masked positions
// as a shaded block, revealed tokens as text.
func showStep(w io.Writer, tok *tokenizer.Tokenizer, mask int32, promptLen int) func(int, [][]int32) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	first := true
	return func(step int, x [][]int32) {
		var b strings.Builder
		for _, t := range x[0][promptLen:] {
			switch {
			case t == mask:
				b.WriteString("\u2591")
			case tok != nil:
				b.WriteString(tok.Decode([]int{int(t)}, true))
			default:
				fmt.Fprintf(&b, "%d ", t)
			}
		}
		if first {
			fmt.Fprint(w, "\0337")
			first = false
		} else {
			fmt.Fprint(w, "\0338\033[J")
		}
		fmt.Fprintf(w, "[step %d]\n%s\n", step, b.String())
	}
}

// addDecodeFlags declares the decoding, device and adapter flags generate
// and chat share.
func addDecodeFlags(f *pflag.FlagSet, g *generateFlags) {
	f.BoolVar(&g.ar, "ar", false, "autoregressive decoding with a KV cache (for AR source models)")
	addSamplerFlags(f, &g.samplerFlags, "", diffusion.DefaultGenLen)
	f.Uint64Var(&g.seed, "seed", 0, "random seed")
	f.BoolVar(&g.noCache, "no-cache", false, "block models: recompute finished blocks every step")
	f.StringVar(&g.device, "device", "auto", "auto, cpu or cuda")
	f.IntVar(&g.threads, "threads", 0, "CPU threads (0: all)")
	adapterFlag(f, &g.adapter)
}

// samplerFlags are the sampler settings of generate, chat and eval --task.
type samplerFlags struct {
	genLen, steps, blockLen, topK int
	temperature, topP             float64
	algTemp, threshold            float64
	alg                           string
}

// addSamplerFlags declares them; each help text starts with prefix.
func addSamplerFlags(f *pflag.FlagSet, s *samplerFlags, prefix string, genLen int) {
	f.IntVar(&s.genLen, "gen-len", genLen, prefix+"tokens to generate")
	f.IntVar(&s.steps, "steps", 0, prefix+"denoising steps (default: gen-len)")
	f.IntVar(&s.blockLen, "block-len", 0, prefix+"semi-autoregressive block length (default: gen-len, or the model's block size)")
	f.Float64Var(&s.temperature, "temperature", 0, prefix+"sampling temperature (0: greedy)")
	f.Float64Var(&s.topP, "top-p", 0, prefix+"nucleus sampling: keep the smallest set of tokens with this much probability (0: off)")
	f.IntVar(&s.topK, "top-k", 0, prefix+"keep the k most likely tokens (0: off)")
	f.StringVar(&s.alg, "alg", "confidence", prefix+"reveal order: confidence, margin, entropy, or random (Dream's origin)")
	f.Float64Var(&s.algTemp, "alg-temp", 0, prefix+"> 0: draw positions from softmax(confidence/alg-temp) instead of taking the top ones")
	f.Float64Var(&s.threshold, "threshold", 0, prefix+"Fast-dLLM parallel decoding: reveal every position more confident than this (0: off)")
}

// defaults sets the flags the user did not give from dir's
// generation_config.json.
func (s *samplerFlags) defaults(cmd *cobra.Command, dir string) {
	d, f := diffusion.GenDefaults(dir), cmd.Flags()
	unlessGiven(f, "gen-len", &s.genLen, d.GenLen)
	unlessGiven(f, "steps", &s.steps, d.Steps)
	unlessGiven(f, "block-len", &s.blockLen, d.BlockLen)
	unlessGiven(f, "top-k", &s.topK, d.TopK)
	unlessGiven(f, "temperature", &s.temperature, d.Temperature)
	unlessGiven(f, "top-p", &s.topP, d.TopP)
	unlessGiven(f, "alg-temp", &s.algTemp, d.AlgTemp)
	unlessGiven(f, "threshold", &s.threshold, d.Threshold)
	unlessGiven(f, "alg", &s.alg, string(d.Alg))
}

// unlessGiven sets *dst to v when flag was not on the command line.
func unlessGiven[T any](f *pflag.FlagSet, flag string, dst *T, v T) {
	if !f.Changed(flag) {
		*dst = v
	}
}

// options are the diffusion sampler's settings.
func (s *samplerFlags) options() diffusion.GenOptions {
	return diffusion.GenOptions{GenLen: s.genLen, Steps: s.steps, BlockLen: s.blockLen, Temperature: s.temperature,
		TopP: s.topP, TopK: s.topK, Alg: diffusion.Alg(s.alg), AlgTemp: s.algTemp, Threshold: s.threshold}
}

// sampling are the AR sampler's.
func (s *samplerFlags) sampling() model.Sampling {
	return model.Sampling{Temperature: s.temperature, TopK: s.topK, TopP: s.topP}
}
