package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dllm-dev/dllm/anneal"
	"github.com/dllm-dev/dllm/corpus"
	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

// ErrInterrupted is returned when the context ends a run early; a
// checkpoint of the last finished step has been written.
var ErrInterrupted = errors.New("interrupted")

// Summary is what a finished (or interrupted) run reports.
type Summary struct {
	Out          string                `json:"out"`
	Export       string                `json:"export,omitempty"`
	Steps        int                   `json:"steps"`
	TokensSeen   int64                 `json:"tokens_seen"`
	Seconds      float64               `json:"seconds"`
	TokensPerSec float64               `json:"tokens_per_second"`
	FinalLoss    float64               `json:"final_train_loss"`
	MaskToken    tokenizer.MaskPlan    `json:"mask_token"`
	Before       *diffusion.EvalResult `json:"eval_before,omitempty"`
	After        *diffusion.EvalResult `json:"eval_after,omitempty"`
	Checkpoint   string                `json:"last_checkpoint,omitempty"`
	// SFT describes instruction data: rows, cuts, prompt/response tokens.
	SFT *corpus.SFTStats `json:"sft,omitempty"`
}

// run is the state of one conversion.
type run struct {
	ctx   context.Context
	opt   Options
	be    kernels.Backend
	log   io.Writer
	m     *model.Model
	tok   *tokenizer.Tokenizer
	plan  tokenizer.MaskPlan
	data  *corpus.Corpus
	obj   diffusion.Objective // training (t from --t-range)
	eobj  diffusion.Objective // evaluation (t over the full range)
	chat  *tokenizer.ChatTemplate
	sched []anneal.Stage // block-size schedule, nil for plain annealing

	batch      *diffusion.Batch
	docs       []int32
	acts       map[int]*model.Activations // by row length
	noiseSteps int                        // steps with embedding noise
	noiseStd   float64                    // its standard deviation
	noise      []float32                  // this step's noise (T x hidden)

	ad   *model.LoRA // LoRA; nil for full fine-tuning
	adam *AdamW
	// --bf16-copies as checkFits resolved it ("on", "off"; "" where no
	// copies apply).
	copies string
	// MoE: the load-balancing loss's coefficient, and this step's aux loss
	// and tokens per expert (sparse layer x expert) over its micro-batches.
	auxCoef float64
	auxLoss float64
	counts  [][]int
	pcg     *rand.PCG
	rng     *rand.Rand
	state   trainerState
	metrics *os.File
	prog    *progress
	summary Summary
}

// trainerState is what a checkpoint needs beyond weights and optimizer
// moments to continue a run exactly.
type trainerState struct {
	Step       int                   `json:"step"` // optimizer steps done
	TokensSeen int64                 `json:"tokens_seen"`
	RNG        []byte                `json:"rng"`
	Cursor     corpus.Cursor         `json:"cursor"`
	Seconds    float64               `json:"seconds"`
	MaskID     int                   `json:"mask_token_id"`
	Before     *diffusion.EvalResult `json:"eval_before,omitempty"`
	LastEval   *diffusion.EvalResult `json:"last_eval,omitempty"`
	LastLoss   float64               `json:"last_loss"`
	NoiseSteps int                   `json:"embed_noise_steps"`
	NoiseStd   float64               `json:"embed_noise_std"`
	DataCache  []string              `json:"data_cache,omitempty"` // names of the tokenized data, by content hash
	Options    Options               `json:"options"`
	// Source is the fingerprint of the base a LoRA run adapts (its
	// checkpoints hold only what trains).
	Source string `json:"source_fingerprint,omitempty"`
}

// Run converts opt.Source on backend be, logging progress to log. When ctx
// ends it saves a checkpoint and returns ErrInterrupted.
func Run(ctx context.Context, opt Options, be kernels.Backend, log io.Writer) (*Summary, error) {
	// A resumed run takes its settings from the checkpoint (prepare).
	if opt.Resume && opt.Out == "" {
		return nil, badInput("--resume needs --out, the folder of the run to continue")
	}
	if !opt.Resume {
		// A source that is no model folder is named before anything else.
		_, r, err := model.OpenDir(opt.Source)
		if err != nil {
			return nil, err
		}
		r.Close()
		if err := opt.Resolve(); err != nil {
			return nil, err
		}
	}
	if opt.Source != "" {
		if err := checkInputsOutside(&opt); err != nil {
			return nil, err
		}
	}
	_, statErr := os.Stat(opt.Out)
	_, lockErr := os.Stat(filepath.Join(opt.Out, lockName))
	_, cacheErr := os.Stat(filepath.Join(opt.Out, "cache"))
	lock, err := lockOut(opt.Out)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	r := &run{opt: opt, be: be, log: log, ctx: ctx}
	did, err := recoverOut(opt.Out)
	for _, d := range did {
		r.logf("%s: %s", opt.Out, d)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: cleaning up after a killed run: %w", opt.Out, err)
	}
	if err := r.prepare(); err != nil {
		// Refused: leave no lock file, data cache (of this run alone: the
		// data was refused after it) or empty folder behind.
		if os.IsNotExist(cacheErr) {
			os.RemoveAll(filepath.Join(opt.Out, "cache"))
		}
		if os.IsNotExist(lockErr) {
			os.Remove(filepath.Join(opt.Out, lockName))
		}
		if os.IsNotExist(statErr) {
			os.Remove(opt.Out)
		}
		return nil, err
	}
	defer r.close()
	if err := r.train(ctx); err != nil {
		return &r.summary, err
	}
	if err := r.metrics.Sync(); err != nil {
		return &r.summary, fmt.Errorf("writing %s: %v", r.metrics.Name(), unwrapPath(err))
	}
	if err := r.export(); err != nil {
		return &r.summary, err
	}
	return &r.summary, r.close()
}

func (r *run) close() error {
	if r.metrics == nil {
		return nil
	}
	err := r.metrics.Close()
	r.metrics = nil
	if err != nil {
		return fmt.Errorf("writing %s: %v", filepath.Join(r.opt.Out, "metrics.jsonl"), unwrapPath(err))
	}
	return nil
}

func (r *run) logf(format string, a ...any) {
	if r.prog != nil {
		r.prog.clear()
	}
	fmt.Fprintf(r.log, format+"\n", a...)
}

func (r *run) prepare() error {
	o := &r.opt
	resumeDir := ""
	if o.Resume {
		d, err := latestCheckpoint(o.Out)
		if err != nil {
			return err
		}
		resumeDir = d
		saved, err := readState(d)
		if err != nil {
			return err
		}
		// The saved run defines the experiment; only its length and how it
		// runs may change on resume.
		keep := *o
		*o = saved.Options
		for _, name := range keep.Set {
			switch name {
			case "steps":
				o.Steps = keep.Steps
			case "device":
				o.Device = keep.Device
			case "threads":
				o.Threads = keep.Threads
			case "eval-every":
				o.EvalEvery = keep.EvalEvery
			case "save-every":
				o.SaveEvery = keep.SaveEvery
			case "keep":
				o.Keep = keep.Keep
			case "quiet":
				o.Quiet = keep.Quiet
			case "recompute":
				o.Recompute = keep.Recompute
			case "bf16-copies":
				o.BF16Copies = keep.BF16Copies
			case "resume", "out", "config":
			default:
				if !contains(Resumable, name) {
					return badInput("--%s cannot change when resuming: the run's settings are in %s/trainer_state.json (start over with --force instead)", name, d)
				}
			}
		}
		o.Resume, o.Force, o.Out = true, false, keep.Out
		if keep.Source != "" && keep.Source != o.Source {
			return badInput("--resume: the run converts %s, not %s", o.Source, keep.Source)
		}
		if err := o.Resolve(); err != nil {
			return err
		}
		if err := checkInputsOutside(o); err != nil {
			return err
		}
		r.state = *saved
	} else if err := checkOut(o.Out, o.Force); err != nil {
		return err
	}
	if err := model.CheckDir(o.Source); err != nil {
		return err
	}
	for _, p := range append(append([]string(nil), o.Data...), o.EvalData...) {
		if _, err := os.Stat(p); err != nil {
			return badInput("training data %s: %v", p, unwrapPath(err))
		}
	}

	src, err := model.Open(o.Source, model.OpenOptions{})
	if err != nil {
		return err
	}
	tok, cfg := src.Tok, src.Cfg
	r.tok = tok
	if err := model.CheckGenerationConfig(o.Source, cfg.Vocab); err != nil {
		return err
	}
	if err := r.checkFits(cfg); err != nil {
		return err
	}
	if tok.EOS() < 0 {
		return badInput("%s: neither the tokenizer nor config.json names an EOS token; documents need one", o.Source)
	}
	if r.plan, err = src.PlanMask(o.MaskToken); err != nil {
		return badInput("mask token: %w", err)
	}
	r.summary.MaskToken = r.plan

	switch {
	case o.LoRARank > 0:
		if resumeDir != "" {
			if r.state.MaskID != r.plan.ID {
				return badInput("resume: the checkpoint used mask id %d but the source now gives %d", r.state.MaskID, r.plan.ID)
			}
			if fp, err := sourceFingerprint(o.Source); err != nil || fp != r.state.Source {
				return badInput("resume: %s is not the base this LoRA run started from (fingerprint %s, the run's %s): resume with the same source weights", o.Source, fp, r.state.Source)
			}
		}
		// The frozen base, its matrices in bf16 on a GPU with bf16 matmuls,
		// with the new mask row (if any) added on the host.
		grow := 0
		if r.plan.Kind == tokenizer.MaskNewRow {
			grow = 1
		}
		r.m, err = model.LoadFrozen(o.Source, r.be, grow)
		if err != nil {
			return err
		}
	case resumeDir != "":
		r.m, err = model.Load(resumeDir, r.be)
		if err != nil {
			return fmt.Errorf("resume from %s: %w", resumeDir, err)
		}
		if r.state.MaskID != r.plan.ID {
			return badInput("resume: the checkpoint used mask id %d but the source now gives %d", r.state.MaskID, r.plan.ID)
		}
		src, err := model.LoadConfig(o.Source)
		if err == nil {
			r.m.Cfg.Raw = mergeVocab(src.Raw, r.m.Cfg.Vocab)
		}
	case o.Init == "random":
		r.m = model.New(cfg, r.be)
		r.m.InitRandom(o.Seed)
	default:
		if err := src.LoadModel(r.be); err != nil {
			return err
		}
		r.m = src.Model
	}
	if r.m.HasNonFinite() {
		if resumeDir != "" {
			return badInput("%s holds NaN or infinite weights: it cannot be resumed; move it out of %s to resume from the checkpoint before it, or start over with --force", resumeDir, o.Out)
		}
		return badInput("the weights of %s hold NaN or infinite values: it cannot be converted (download or export it again)", o.Source)
	}
	r.warnings(cfg, tok)
	if o.LoRARank > 0 && r.plan.Kind == tokenizer.MaskNewRow {
		r.logf("mask token: %s added as a new embedding row %d (mean of the existing rows)", r.plan.Token, r.plan.ID)
	} else if resumeDir == "" && r.plan.Kind == tokenizer.MaskNewRow {
		g, err := r.m.GrowVocab(1)
		if err != nil {
			return err
		}
		r.be.Free(r.m.Params)
		r.m = g
		r.logf("mask token: %s added as a new embedding row %d (mean of the existing rows)", r.plan.Token, r.plan.ID)
	} else {
		r.logf("mask token: %s = %d (%s)", r.plan.Token, r.plan.ID, r.plan.Kind)
	}
	if o.LoRARank > 0 {
		if err := r.setupLoRA(); err != nil {
			return err
		}
		if resumeDir != "" {
			if err := r.loadAdapterCheckpoint(resumeDir); err != nil {
				return err
			}
		}
	} else {
		r.m.SetBF16Copies(r.copies != "off")
		r.m.EnableGrads()
	}
	if me := r.m.Cfg.MoE; me != nil {
		r.auxCoef = me.AuxCoef
		if o.RouterAuxCoef >= 0 {
			r.auxCoef = o.RouterAuxCoef
		}
		r.logf("mixture of experts: %d experts, top-%d, %d sparse layers; router load-balancing loss coefficient %g", me.Experts, me.TopK,
			len(r.m.Cfg.SparseLayers()), r.auxCoef)
	}
	r.obj = o.TrainObjective(int32(r.plan.ID))
	r.eobj = o.Objective(int32(r.plan.ID))
	if resumeDir == "" {
		r.planEmbedNoise()
	} else {
		// Decided once from the starting weights; a resumed run keeps it.
		r.noiseSteps, r.noiseStd = r.state.NoiseSteps, r.state.NoiseStd
	}
	if o.BlockSchedule != "" {
		r.sched, _ = anneal.ParseSchedule(o.BlockSchedule, o.SeqLen)
	}

	r.logf("data: reading %v", o.Data)
	evalFrac := o.EvalFraction
	if len(o.EvalData) > 0 {
		evalFrac = 0
	}
	if o.SFT {
		err = r.loadSFT(evalFrac)
	} else {
		r.data, err = corpus.Load(tok, corpus.Options{
			Paths: o.Data, EvalPaths: o.EvalData, EvalFraction: evalFrac, TextField: o.TextField,
			Separator: o.Separator, SeqLen: o.SeqLen, Seed: o.Seed, CacheDir: filepath.Join(o.Out, "cache"),
			BOSAtRowStart: tok.AddsBOS(), Stop: r.stop,
		}, nil)
	}
	if err != nil {
		return err
	}
	if resumeDir == "" {
		// The data too is valid: only now may --force remove an earlier run
		// (prepareOut keeps the data cache just made).
		if err := prepareOut(o.Out); err != nil {
			return err
		}
	}

	r.adam = r.newOptimizer()
	r.pcg = rand.NewPCG(o.Seed, 0x636f6e76)
	if resumeDir != "" {
		if err := r.pcg.UnmarshalBinary(r.state.RNG); err != nil {
			return fmt.Errorf("resume: bad RNG state in %s: %v", resumeDir, err)
		}
		if err := r.adam.Load(resumeDir); err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		if err := r.sameData(resumeDir); err != nil {
			return err
		}
		r.logf("resuming from %s (step %d)", resumeDir, r.state.Step)
	} else {
		r.state = trainerState{MaskID: r.plan.ID, Options: *o, NoiseSteps: r.noiseSteps, NoiseStd: r.noiseStd, DataCache: r.dataNames()}
		if r.lora() {
			if r.state.Source, err = sourceFingerprint(o.Source); err != nil {
				return err
			}
		}
	}
	r.rng = rand.New(r.pcg)

	eff := *o
	if r.copies != "" {
		eff.BF16Copies = r.copies // what auto chose
	}
	cfgJSON, _ := json.MarshalIndent(&eff, "", "  ")
	if err := writeFileAtomic(filepath.Join(o.Out, "run_config.json"), append(cfgJSON, '\n')); err != nil {
		return err
	}
	r.logf("config:\n%s", cfgJSON)
	r.logf("model: %s, %s parameters, vocab %d; data: %d train rows, %d eval rows of %d tokens; backend %s",
		r.m.Cfg.ModelType, fmtCount(int64(r.m.Layout.Values)), r.m.Cfg.Vocab, r.data.Train.Rows(), r.data.Eval.Rows(), o.SeqLen, r.be.Name())
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if resumeDir == "" {
		flags |= os.O_TRUNC
	}
	r.metrics, err = os.OpenFile(filepath.Join(o.Out, "metrics.jsonl"), flags, 0o644)
	return err
}

// warnings names settings that run but are likely mistakes.
func (r *run) warnings(cfg *model.Config, tok *tokenizer.Tokenizer) {
	o := &r.opt
	if cfg.MaxPositions > 0 && o.SeqLen > cfg.MaxPositions {
		r.logf("warning: --seq-len %d is beyond the model's max_position_embeddings %d: positions past %d were never trained", o.SeqLen, cfg.MaxPositions, cfg.MaxPositions)
	}
	for _, sp := range []struct {
		name string
		id   int
	}{{"EOS", tok.EOS()}, {"BOS", tok.BOS()}, {"PAD", tok.Pad()}, {"PAD", cfg.Pad}} {
		if sp.id >= 0 && sp.id == r.plan.ID {
			r.logf("warning: the mask token %s (%d) is also the %s token: the model cannot tell a masked position from a real %s (choose another --mask-token)", r.plan.Token, r.plan.ID, sp.name, sp.name)
			break
		}
	}
	for _, part := range strings.Split(o.BlockSchedule, ",") {
		size, _, _ := strings.Cut(strings.TrimSpace(part), ":")
		if n, err := strconv.Atoi(strings.TrimSpace(size)); err == nil && n > o.SeqLen {
			r.logf("warning: --block-schedule block %d is larger than --seq-len %d: that stage trains full-sequence diffusion", n, o.SeqLen)
		}
	}
}

// dataNames identifies the tokenized data by the content-hashed names of
// its cache files.
func (r *run) dataNames() []string {
	var names []string
	for _, p := range r.data.Stats.CacheFiles {
		names = append(names, filepath.Base(p))
	}
	return names
}

// sameData refuses to resume on data other than the run's.
func (r *run) sameData(dir string) error {
	if saved, now := r.state.DataCache, r.dataNames(); len(saved) > 0 && strings.Join(saved, ",") != strings.Join(now, ",") {
		return badInput("--resume: the data %v changed since the run started (%s/trainer_state.json records other contents): resuming would not continue the same experiment; restore the data, or start over with --force", r.opt.Data, dir)
	}
	return nil
}

// stepRule is the attention rule of an optimizer step and its block size:
// > 0 for a block-diffusion stage (rows [xt ; x0] of 2L tokens), 0 for plain
// masked diffusion, annealed from causal when asked.
func (r *run) stepRule(step int) (kernels.Visibility, int) {
	if r.sched != nil {
		if st, _ := anneal.StageAt(r.sched, step); st.Block > 0 {
			return kernels.Visibility{Mode: kernels.BlockDiffusion, Block: st.Block, Half: r.opt.SeqLen, DocMask: r.opt.DocMask}, st.Block
		}
	}
	return anneal.Annealed(step, r.opt.AnnealSteps, r.opt.Seed, r.opt.DocMask), 0
}

// finalVisibility is the rule evaluation uses, and its block size.
func (r *run) finalVisibility() (kernels.Visibility, int) {
	if b := r.finalBlock(); b > 0 {
		return kernels.Visibility{Mode: kernels.BlockDiffusion, Block: b, Half: r.opt.SeqLen, DocMask: r.opt.DocMask}, b
	}
	return kernels.Visibility{Mode: kernels.Bidirectional, DocMask: r.opt.DocMask}, 0
}

func blockOrFull(block, L int) any {
	if block == 0 {
		return "full"
	}
	return block
}

// actsFor returns the training activations of a layout (L or 2L tokens).
func (r *run) actsFor(block int) *model.Activations {
	L := r.opt.SeqLen
	if block > 0 {
		L *= 2
	}
	if r.acts == nil {
		r.acts = map[int]*model.Activations{}
	}
	a, ok := r.acts[L]
	if !ok {
		a = r.m.NewActivationsWith(r.opt.BatchSize, L, model.ActOptions{Training: true, Recompute: r.opt.Recompute})
		r.acts[L] = a
	}
	return a
}

func (r *run) freeActs() {
	for _, a := range r.acts {
		a.Free(r.be)
	}
	r.acts = nil
}

// micro runs forward and backward of one micro-batch, accumulating
// gradients; it returns the normalised loss share, the hits and the number
// of masked tokens.
func (r *run) micro(step int, vis kernels.Visibility, block int) (float64, int, int, error) {
	o, b := &r.opt, r.batch
	B := o.BatchSize
	a := r.actsFor(block)
	r.data.Train.NextBatchFixed(&r.state.Cursor, o.Seed, b.X0, r.docs, b.Fixed, B)
	tb := 0
	if block > 0 && o.TPer == "block" {
		tb = block
	}
	if b.TBlock != tb || len(b.T) == 0 {
		b.SetTimeBlock(tb)
	}
	r.obj.DrawTimes(r.rng, b, false)
	r.obj.Mask(r.rng, b)
	norm := r.obj.Score(b)
	k := b.NMasked
	if k == 0 {
		return 0, 0, 0, nil
	}
	a.ScoreRows(k)
	if block > 0 {
		r.obj.TwoStream(b, block, a.IDs, a.Pos, r.docs, a.Docs, a.Rows)
	} else {
		copy(a.IDs, b.XT)
		copy(a.Docs, r.docs)
		copy(a.Rows, b.Rows[:k])
	}
	copy(a.Targets, b.Targets[:k])
	copy(a.Weights, b.Weights[:k])
	r.embedNoise(step, a, block)
	a.Upload(r.be)
	a.AuxCoef = r.auxCoef / float64(o.GradAccum)
	r.m.Forward(a, vis)
	s, c := r.m.Loss(a, norm*float64(o.GradAccum), true)
	if err := r.m.Backward(a, vis); err != nil {
		return 0, 0, 0, err
	}
	aux := r.addRouting(a) / float64(o.GradAccum)
	return s/norm/float64(o.GradAccum) + r.auxCoef*aux, c, k, nil
}

// addRouting adds a micro-batch's tokens per expert to the step's and
// returns its load-balancing loss (0 for a dense model).
func (r *run) addRouting(a *model.Activations) float64 {
	counts := a.ExpertCounts()
	if counts == nil {
		return 0
	}
	if r.counts == nil {
		for _, c := range counts {
			r.counts = append(r.counts, make([]int, len(c)))
		}
	}
	for l, c := range counts {
		for e, n := range c {
			r.counts[l][e] += n
		}
	}
	aux := a.AuxLoss()
	r.auxLoss += aux / float64(r.opt.GradAccum)
	return aux
}

func (r *run) evaluate() (*diffusion.EvalResult, error) {
	rows := min(r.opt.EvalRows, r.data.Eval.Rows())
	if rows == 0 {
		return nil, nil
	}
	vis, block := r.finalVisibility()
	eo := diffusion.EvalOptions{MC: r.opt.EvalMC, Seed: r.opt.Seed, BatchSize: r.opt.BatchSize, Block: block,
		AccuracyAt: diffusion.DefaultAccuracyAt, Stop: r.stop}
	if r.data.Eval.SFT() {
		eo.Fixed = r.data.Eval.Fixed
	}
	res, err := diffusion.Evaluate(r.m, func(i int, ids, docs []int32) { r.data.Eval.Row(i, ids, docs) }, rows, r.opt.SeqLen,
		r.eobj, vis, eo)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

func (r *run) train(ctx context.Context) error {
	o := &r.opt
	st := &r.state
	if st.Step == 0 && st.Before == nil {
		r.logf("eval before training (%d held-out rows, %d Monte-Carlo passes)...", min(o.EvalRows, r.data.Eval.Rows()), o.EvalMC)
		ev, err := r.evaluate()
		if err != nil {
			return err
		}
		st.Before = ev
		if ev != nil {
			r.logf("eval before: %s", fmtEval(ev))
			if err := r.writeMetric(map[string]any{"type": "eval", "step": 0, "eval": ev}); err != nil {
				return err
			}
		}
	}
	r.summary.Before = st.Before
	B, L := o.BatchSize, o.SeqLen
	r.batch = diffusion.NewBatch(B, L)
	if r.data.Train.SFT() {
		r.batch.Fixed = make([]bool, B*L)
	}
	r.docs = make([]int32, B*L)
	defer r.freeActs()
	r.prog = newProgress(r.log, o.Steps, o.Quiet)
	start := time.Now()
	startStep, startSeconds := st.Step, st.Seconds
	for st.Step < o.Steps {
		if ctx.Err() != nil {
			return r.interrupted()
		}
		step := st.Step
		vis, block := r.stepRule(step)
		lr := o.LearningRate(step)
		t0 := time.Now()
		r.be.Zero(r.trainGrads())
		r.auxLoss = 0
		for _, c := range r.counts {
			clear(c)
		}
		var loss float64
		var correct, masked int
		for micro := 0; micro < o.GradAccum; micro++ {
			r.loraDropout(step, micro)
			s, c, k, err := r.micro(step, vis, block)
			if err != nil {
				return err
			}
			loss += s
			correct += c
			masked += k
		}
		r.loraDropout(-1, 0)
		gnorm := math.Sqrt(r.be.SumSquares(r.trainGrads()))
		if err := r.be.Err(); err != nil {
			return err
		}
		if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(gnorm) || math.IsInf(gnorm, 0) {
			kept := "no checkpoint was written before it"
			if steps, err := checkpoints(o.Out); err == nil && len(steps) > 0 {
				kept = fmt.Sprintf("the newest checkpoint, %s, is kept (resume from it with a lower --lr or a tighter --clip)", checkpointDir(o.Out, steps[len(steps)-1]))
			}
			return fmt.Errorf("step %d: non-finite loss (%v) or gradient norm (%v): the run stops here; %s", step+1, loss, gnorm, kept)
		}
		scale := float32(1)
		if o.Clip > 0 && gnorm > o.Clip {
			scale = float32(o.Clip / gnorm)
		}
		r.adam.Step(lr, step+1, scale)
		r.afterUpdate()
		if err := r.be.Sync(); err != nil {
			return err
		}
		st.Step++
		tokens := int64(B * L * o.GradAccum)
		st.TokensSeen += tokens
		st.LastLoss = loss
		st.Seconds = startSeconds + time.Since(start).Seconds()
		dt := time.Since(t0).Seconds()
		acc := 0.0
		if masked > 0 {
			acc = float64(correct) / float64(masked)
		}
		ratio := 1.0
		if vis.Mode == kernels.Annealed {
			ratio = float64(vis.Ratio)
		}
		tps := float64(tokens) / dt
		rec := map[string]any{"type": "train", "step": st.Step, "loss": loss, "acc": acc, "lr": lr, "grad_norm": gnorm,
			"ratio": ratio, "tokens_per_s": tps, "tokens_seen": st.TokensSeen, "seconds": st.Seconds}
		if r.sched != nil {
			rec["block"] = blockOrFull(block, L)
		}
		if r.counts != nil {
			rec["aux_loss"], rec["expert_counts"] = r.auxLoss, r.counts
		}
		if err := r.writeMetric(rec); err != nil {
			return err
		}
		avgTPS := float64(int64(st.Step-startStep)*tokens) / time.Since(start).Seconds()
		stage := ""
		if r.sched != nil {
			stage = fmt.Sprint(blockOrFull(block, L))
		}
		r.prog.update(st.Step, loss, acc, ratio, stage, lr, avgTPS, time.Since(start), st.Step-startStep)

		if o.EvalEvery > 0 && st.Step%o.EvalEvery == 0 && st.Step < o.Steps {
			if err := r.evalNow(); errors.Is(err, ErrInterrupted) {
				return r.interrupted()
			} else if err != nil {
				return err
			}
		}
		if o.SaveEvery > 0 && st.Step%o.SaveEvery == 0 && st.Step < o.Steps {
			dir, err := r.saveCheckpoint()
			if err != nil {
				return err
			}
			r.summary.Checkpoint = dir
		}
	}
	r.prog.done()
	if err := r.evalNow(); errors.Is(err, ErrInterrupted) {
		return r.interrupted()
	} else if err != nil {
		return err
	}
	dir, err := r.saveCheckpoint()
	if err != nil {
		return err
	}
	r.summary.Checkpoint = dir
	r.summary.Out, r.summary.Steps, r.summary.TokensSeen, r.summary.Seconds = r.opt.Out, st.Step, st.TokensSeen, st.Seconds
	if st.Seconds > 0 {
		r.summary.TokensPerSec = float64(st.TokensSeen) / st.Seconds
	}
	r.summary.FinalLoss = st.LastLoss
	r.summary.After = st.LastEval
	return nil
}

// stop is what data loading and evaluation ask between batches, so that a
// signal is acted on within a fraction of a second.
func (r *run) stop() error {
	if r.ctx.Err() != nil {
		return ErrInterrupted
	}
	return nil
}

// interrupted saves a checkpoint of the last finished step and returns
// ErrInterrupted.
func (r *run) interrupted() error {
	dir, err := r.saveCheckpoint()
	if err != nil {
		return fmt.Errorf("interrupted, and the checkpoint failed: %w", err)
	}
	r.summary.Checkpoint = dir
	r.logf("interrupted at step %d: checkpoint %s written; continue with --resume", r.state.Step, dir)
	return ErrInterrupted
}

func (r *run) evalNow() error {
	ev, err := r.evaluate()
	if err != nil {
		return err
	}
	if ev == nil {
		return nil
	}
	r.state.LastEval = ev
	r.logf("eval at step %d: %s", r.state.Step, fmtEval(ev))
	return r.writeMetric(map[string]any{"type": "eval", "step": r.state.Step, "eval": ev})
}

// writeMetric appends one line to metrics.jsonl; a failed write (a full
// disk) stops the run rather than losing lines.
func (r *run) writeMetric(v map[string]any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := r.metrics.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing %s: %v", r.metrics.Name(), unwrapPath(err))
	}
	return nil
}

func fmtEval(e *diffusion.EvalResult) string {
	s := fmt.Sprintf("NELBO %.4f nats/token (ppl bound %.2f)", e.NELBO, e.PPLBound)
	for _, a := range e.Accuracy {
		s += fmt.Sprintf(", acc@t=%.2g %.3f", a.T, a.Accuracy)
	}
	return s
}

func fmtCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func mergeVocab(raw map[string]any, vocab int) map[string]any {
	out := map[string]any{}
	for k, v := range raw {
		out[k] = v
	}
	out["vocab_size"] = vocab
	return out
}

// planEmbedNoise settles LLaDA 2.0's embedding noise: --embed-noise N steps
// (-1: automatic, on for the first 5% of steps when the mask token's
// embedding row is nearly zero — an untrained spare row — which is the case
// the noise is for, off otherwise), with standard deviation --embed-noise-std
// (0: the RMS of the embedding's entries, so the noise is on the scale of a
// real token).
func (r *run) planEmbedNoise() {
	o := &r.opt
	H := r.m.Cfg.Hidden
	emb := make([]float32, r.m.Embed.W.N)
	r.be.Download(emb, r.m.Embed.W)
	var ss float64
	norms := make([]float64, 0, len(emb)/H)
	for i := 0; i < len(emb)/H; i++ {
		var n float64
		for _, v := range emb[i*H : (i+1)*H] {
			n += float64(v) * float64(v)
		}
		ss += n
		norms = append(norms, math.Sqrt(n))
	}
	r.noiseStd = o.EmbedNoiseStd
	if r.noiseStd <= 0 {
		r.noiseStd = math.Sqrt(ss / float64(len(emb)))
	}
	r.noiseSteps = o.EmbedNoise
	if r.noiseSteps < 0 {
		sorted := append([]float64(nil), norms...)
		sort.Float64s(sorted)
		median := sorted[len(sorted)/2]
		r.noiseSteps = 0
		if norms[r.plan.ID] < 0.1*median {
			r.noiseSteps = max(o.Steps/20, 1)
		}
	}
	if r.noiseSteps > 0 {
		r.logf("embedding noise: std %.3g on masked positions for the first %d steps", r.noiseStd, r.noiseSteps)
	}
}

// embedNoise fills the activations' embedding noise for a step: Gaussian on
// the masked (noisy-half) positions, zero elsewhere.
func (r *run) embedNoise(step int, a *model.Activations, block int) {
	if step >= r.noiseSteps {
		a.Noise = nil
		return
	}
	H, L := r.m.Cfg.Hidden, r.opt.SeqLen
	if len(r.noise) != a.T*H {
		r.noise = make([]float32, a.T*H)
	}
	clear(r.noise)
	width := L
	if block > 0 {
		width = 2 * L
	}
	for i, m := range r.batch.Masked {
		if !m {
			continue
		}
		row := i/L*width + i%L
		for j := 0; j < H; j++ {
			r.noise[row*H+j] = float32(r.rng.NormFloat64() * r.noiseStd)
		}
	}
	a.Noise = r.noise
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// loadSFT reads instruction data (--sft) with the chat template of the
// source or of --chat-template.
func (r *run) loadSFT(evalFrac float64) error {
	o := &r.opt
	ct, err := tokenizer.LoadChatTemplate(o.Source, o.ChatTemplate)
	if err != nil {
		return &InputError{err}
	}
	r.chat = ct
	if ct != nil {
		r.logf("chat template: %s (end of turn %q)", ct.Path, ct.EndOfTurn())
		if o.ChatTemplate != "" {
			// The exported tokenizer carries the template it was trained with.
			r.tok.SetChatTemplate(ct.Source)
		}
	}
	r.data, err = corpus.LoadSFT(r.tok, corpus.SFTOptions{
		Paths: o.Data, EvalPaths: o.EvalData, EvalFraction: evalFrac, SeqLen: o.SeqLen,
		Template: ct, TemplateHint: o.Source, Pad: o.SFTPad, Stop: r.stop,
	})
	if err != nil {
		return err
	}
	st := r.data.Stats.SFT
	r.summary.SFT = st
	r.logf("sft: %d lines, %d rows (one per assistant turn); %d prompt, %d response, %d padding tokens; %d rows cut at --seq-len %d (%d tokens), %d dropped",
		st.Lines, st.Examples, st.PromptTokens, st.ResponseTokens, st.PadTokens, st.CutRows, o.SeqLen, st.CutTokens, st.DroppedRows)
	return nil
}
