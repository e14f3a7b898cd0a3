package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"regexp"
	"runtime/debug"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dllm-dev/dllm/corpus"
	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/task"
	"github.com/dllm-dev/dllm/tokenizer"
)

// taskFlags are eval's benchmark-task flags.
type taskFlags struct {
	file, format, compare, extract, delimiter string
	chat                                      bool
	chatTemplate                              string
	until                                     []string
	limit                                     int
	// generation (diffusion: defaults from the model's generation_config.json)
	samplerFlags
}

func addTaskFlags(f *pflag.FlagSet, t *taskFlags) {
	f.StringVar(&t.file, "task", "", "benchmark task file (JSONL): multiple choice or generation (see --task-format)")
	f.StringVar(&t.format, "task-format", "", "choice, hellaswag, arc, piqa, mmlu or gen (default: from the first line's fields)")
	f.IntVar(&t.limit, "limit", 0, "task: only the first K examples (0: all)")
	f.StringVar(&t.compare, "compare", "", "task: also run the AR source model SRC (in AR mode) and print both in one table")
	f.StringVar(&t.delimiter, "delimiter", " ", "task: text between context and choice (lm-evaluation-harness's target_delimiter)")
	f.StringVar(&t.extract, "extract", task.DefaultExtract, "generation task: regular expression whose first group is the answer")
	f.StringSliceVar(&t.until, "until", nil, "generation task: cut the generation at the first of these strings")
	f.BoolVar(&t.chat, "chat", false, "generation task: wrap each prompt as a user turn in the model's chat template (with the assistant prompt)")
	f.StringVar(&t.chatTemplate, "chat-template", "", "generation task: Jinja file (or JSON with chat_template) instead of the model's template (implies --chat)")
	addSamplerFlags(f, &t.samplerFlags, "generation task: ", 256)
}

// taskRun is one model's result in the table.
type taskRun struct {
	Model string `json:"model"`
	Mode  string `json:"mode"`
	*task.Result
	Gen *task.GenResult `json:"generation,omitempty"`
}

func runTask(cmd *cobra.Command, dir string, e *evalFlags) error {
	tf := &e.task
	tk, err := task.Load(tf.file, tf.format)
	if err != nil {
		return &exitError{2, err}
	}
	var extract *regexp.Regexp
	if tk.Format == task.Gen {
		if extract, err = regexp.Compile(tf.extract); err != nil {
			return &exitError{2, fmt.Errorf("--extract: %v", err)}
		}
	}
	unlessGiven(cmd.Flags(), "mc", &e.mc, 32)
	unlessGiven(cmd.Flags(), "stratified", &e.stratified, true)
	be, err := openBackend(e.device, e.threads, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer be.Close()
	type job struct{ dir, adapter, mode string }
	jobs := []job{{dir, e.adapter, e.mode}}
	if tf.compare != "" {
		jobs = []job{{tf.compare, "", "ar"}, {dir, e.adapter, e.mode}}
	}
	var runs []taskRun
	for i, j := range jobs {
		if i > 0 {
			debug.FreeOSMemory() // the CPU backend's buffers of the model before: MemAvailable again
		}
		r, err := taskOne(cmd, be, tk, j.dir, j.adapter, j.mode, extract, e)
		if err != nil {
			return withDir(j.dir, err)
		}
		runs = append(runs, r)
	}
	out := cmd.OutOrStdout()
	if e.asJSON {
		if len(runs) == 1 {
			if runs[0].Gen != nil {
				return json.NewEncoder(out).Encode(runs[0].Gen)
			}
			return json.NewEncoder(out).Encode(runs[0].Result)
		}
		return json.NewEncoder(out).Encode(map[string]any{"task": tf.file, "format": tk.Format, "runs": runs})
	}
	printTaskTable(out, tf.file, tk.Format, runs)
	return nil
}

// withDir is err prefixed with the model folder dir (%w: an exitError
// keeps its code), unless its message names dir already.
func withDir(dir string, err error) error {
	for _, d := range []string{dir, filepath.Clean(dir)} {
		if regexp.MustCompile(`(^|[\s'"(])` + regexp.QuoteMeta(d) + `($|[\s'"),:/])`).MatchString(err.Error()) {
			return err
		}
	}
	return fmt.Errorf("%s: %w", dir, err)
}

func printTaskTable(w io.Writer, file, format string, runs []taskRun) {
	n := 0
	if r := runs[0]; r.Result != nil {
		n = r.N
	} else {
		n = r.Gen.N
	}
	fmt.Fprintf(w, "task %s (%s), %d examples\n", file, format, n)
	if runs[0].Gen != nil {
		fmt.Fprintf(w, "%-40s %-10s %-18s %10s\n", "model", "mode", "exact match", "tokens/s")
		for _, r := range runs {
			fmt.Fprintf(w, "%-40s %-10s %.4f ± %.4f    %10.1f\n", r.Model, r.Mode, r.Gen.ExactMatch, r.Gen.Stderr, r.Gen.TokensPerSec)
		}
		return
	}
	fmt.Fprintf(w, "%-40s %-10s %-17s %-17s %10s\n", "model", "mode", "acc", "acc_norm", "tokens/s")
	for _, r := range runs {
		fmt.Fprintf(w, "%-40s %-10s %.4f ± %.4f   %.4f ± %.4f   %10.0f\n", r.Model, r.Mode, r.Accuracy, r.AccuracyStderr,
			r.AccuracyNorm, r.NormStderr, r.TokensPerSec)
	}
}

// taskOne opens one model (with adapter merged, if any) and runs the task
// on it in mode ("" picks the model's own).
func taskOne(cmd *cobra.Command, be kernels.Backend, tk *task.Task, dir, adapter, mode string, extract *regexp.Regexp, e *evalFlags) (taskRun, error) {
	ck, err := model.Open(dir, model.OpenOptions{Adapter: adapter})
	if err != nil {
		return taskRun{}, err
	}
	cfg, tok := ck.Cfg, ck.Tok
	if mode == "" {
		mode = "ar"
		if cfg.DLLM != nil {
			mode = "diffusion"
		}
	}
	if mode != "ar" && mode != "diffusion" {
		return taskRun{}, &exitError{2, fmt.Errorf("--mode must be ar or diffusion, got %q", mode)}
	}
	var info diffusion.Info
	if mode == "diffusion" {
		if info, err = diffusion.InfoFrom(cfg); err != nil {
			return taskRun{}, fmt.Errorf("%w; --mode ar measures an AR model", err)
		}
	}
	name := dir
	if adapter != "" {
		name = dir + " + " + adapter
	}
	label := fmt.Sprintf("%s (%s)", name, mode)
	run := taskRun{Model: name, Mode: mode}
	L := evalSeqLen(cfg, e.seqLen)
	tf := &e.task
	var sf samplerFlags
	var gopt task.GenOptions
	eos := append([]int32(nil), ck.EOS...)
	if tk.Format == task.Gen {
		gopt = task.GenOptions{Extract: extract, Until: tf.until, Limit: tf.limit, Progress: cmd.ErrOrStderr(), Label: label}
		if tf.chat || tf.chatTemplate != "" {
			ct, err := loadChatTemplate(ck.Find("tokenizer_config.json"), tf.chatTemplate)
			if err != nil {
				return run, err
			}
			if id, ok := tok.ID(ct.EndOfTurn()); ok && ct.EndOfTurn() != "" {
				eos = append(eos, int32(id))
			}
			gopt.Prompt = func(p string) ([]int32, error) {
				s, err := ct.Render([]tokenizer.Message{{Role: "user", Content: p}}, true)
				if err != nil {
					return nil, err
				}
				ids := tok.Encode(s, false)
				out := make([]int32, len(ids))
				for i, v := range ids {
					out[i] = int32(v)
				}
				return out, nil
			}
		}
		// AR decoding takes the flags as given, diffusion the model's
		// generation_config.json for the flags not given.
		sf = tf.samplerFlags
		if mode != "ar" {
			sf.defaults(cmd, ck.Find("generation_config.json"))
		}
		n, err := task.LongestPrompt(tk, tok, gopt)
		if err != nil {
			return run, err
		}
		if err := sf.check(cfg, mode == "ar", 1, n); err != nil {
			return run, err
		}
		d := decoding{ar: mode == "ar", info: info, batch: 1, promptLen: n, genLen: sf.genLen, threads: e.threads}
		if err := budgetOf(be).checkDecoding(cfg, d, "lower --gen-len"); err != nil {
			return run, err
		}
	} else {
		if !cmd.Flags().Changed("seq-len") {
			// Rows as short as the longest segment: attention costs grow with L.
			n, err := task.Longest(tk, tok, tf.delimiter, tf.limit)
			if err != nil {
				return run, err
			}
			align := max(info.BlockSize, 32)
			L = min(L, (n+align-1)/align*align)
		}
		if err := checkScoring(be, cfg, info.BlockSize, e.batch, L, e.threads); err != nil {
			return run, err
		}
	}
	if err := ck.LoadModel(be); err != nil {
		return run, err
	}
	m := ck.Model
	defer m.Free() // --compare: the next model is checked against what is free then
	if tk.Format == task.Gen {
		var gen task.Generator
		if mode == "ar" {
			gen = task.ARGenerator(m, sf.genLen, sf.sampling(), e.seed, eos)
		} else {
			o := sf.options()
			o.Seed, o.EOS = e.seed, eos
			gen = task.DiffusionGenerator(m, info, o)
		}
		res, err := task.RunGen(tk, tok, gen, gopt)
		if err != nil {
			return run, err
		}
		run.Gen = res
		return run, nil
	}
	var sc task.Scorer
	var tokens func() int64
	copies := 1
	if mode == "ar" {
		s := m.NewChoiceScorer(e.batch, L)
		defer s.Free()
		sc, tokens = task.ARScorer{ChoiceScorer: s}, func() int64 { return s.Tokens }
	} else {
		s, err := diffusion.NewChoiceScorer(m, info, diffusion.ChoiceOptions{MC: e.mc, Seed: e.seed, Stratified: e.stratified,
			TMin: cfg.DLLM.TMin, B: e.batch, L: L})
		if err != nil {
			return run, err
		}
		defer s.Free()
		sc, tokens, copies = s, func() int64 { return s.Tokens }, e.mc
	}
	res, err := task.Run(tk, tok, sc, task.Options{Delimiter: e.task.delimiter, Limit: e.task.limit, Budget: e.batch * L,
		Copies: copies, Progress: cmd.ErrOrStderr(), Label: label, Tokens: tokens})
	if err != nil {
		return run, err
	}
	run.Result = res
	return run, nil
}

// evalARRows is --mode ar on the packed held-out rows that --mode diffusion
// (and a convert run's eval) scores, with the same --rows.
func evalARRows(cmd *cobra.Command, m *model.Model, tok *tokenizer.Tokenizer, cfg *model.Config, e *evalFlags) error {
	c, err := corpus.Load(tok, corpus.Options{Paths: e.data, EvalFraction: e.evalFraction, Separator: e.separator,
		TextField: e.textField, SeqLen: e.seqLen, BOSAtRowStart: tok.AddsBOS()}, nil)
	if err != nil {
		return err
	}
	n := c.Eval.Rows()
	if e.rows > 0 {
		n = min(n, e.rows)
	}
	docMask := cfg.DLLM != nil && cfg.DLLM.DocMask
	sum, tokens, err := m.RowsCrossEntropy(c.Eval.Row, n, e.seqLen, e.batch, docMask)
	if err != nil {
		return err
	}
	res := model.AREvalResult{CrossEntropy: sum / float64(tokens), Tokens: tokens, Documents: c.Stats.EvalDocuments}
	res.Perplexity = math.Exp(res.CrossEntropy)
	if e.asJSON {
		return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{"cross_entropy": res.CrossEntropy,
			"perplexity": res.Perplexity, "tokens": tokens, "rows": n, "seq_len": e.seqLen})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "AR cross-entropy %.4f nats/token (perplexity %.3f) over %d held-out rows x %d tokens (positions 1..%d)\n",
		res.CrossEntropy, res.Perplexity, n, e.seqLen, e.seqLen-1)
	return nil
}
