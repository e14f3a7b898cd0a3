// Package convert is a conversion run: an AR checkpoint continues training
// with the masked-diffusion objective while attention is annealed from
// causal to bidirectional (or scheduled through block sizes), with periodic
// evaluation, crash-safe checkpoints, exact resume and an HF-layout export.
// It is the only package that knows about "a run".
package convert

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/dllm-dev/dllm/anneal"
	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/safetensors"
)

// Options are every setting of a run; each has a CLI flag of the same name
// (kebab-case) and a key in --config files.
type Options struct {
	Source string   `json:"source"`
	Data   []string `json:"data"`
	Out    string   `json:"out"`

	// Data.
	TextField    string   `json:"text-field"`
	Separator    string   `json:"separator"`
	EvalData     []string `json:"eval-data,omitempty"`
	EvalFraction float64  `json:"eval-fraction"`
	// SFT: instruction data (JSONL messages or prompt+completion), one
	// example per row, prompts never masked or scored.
	SFT          bool   `json:"sft"`
	SFTPad       string `json:"sft-pad"`
	ChatTemplate string `json:"chat-template,omitempty"`

	// Objective.
	Shift     bool    `json:"shift"`
	Weighting string  `json:"weighting"`
	CartP     float64 `json:"cart-p"`
	LossNorm  string  `json:"loss-norm"`
	TMin      float64 `json:"t-min"`
	TRange    string  `json:"t-range,omitempty"` // "LO,HI": training t ~ U(LO, HI) (LLaDA 2.0 SFT: 0.3,0.8)
	MaskToken string  `json:"mask-token,omitempty"`

	// Attention.
	AnnealSteps   int     `json:"anneal-steps"` // -1: a tenth of Steps
	DocMask       bool    `json:"doc-mask"`
	BlockSchedule string  `json:"block-schedule,omitempty"`
	TPer          string  `json:"t-per"`
	EmbedNoise    int     `json:"embed-noise"`
	EmbedNoiseStd float64 `json:"embed-noise-std"`

	// Training.
	Steps       int     `json:"steps"`
	SeqLen      int     `json:"seq-len"`
	BatchSize   int     `json:"batch-size"`
	GradAccum   int     `json:"grad-accum"`
	Recompute   bool    `json:"recompute"` // keep only layer inputs; recompute each layer before its backward
	LR          float64 `json:"lr"`
	MinLR       float64 `json:"min-lr"` // -1: LR/10
	Warmup      int     `json:"warmup"`
	LRSchedule  string  `json:"lr-schedule"`
	DecayFrac   float64 `json:"decay-fraction"`
	WeightDecay float64 `json:"weight-decay"`
	Beta1       float64 `json:"beta1"`
	Beta2       float64 `json:"beta2"`
	Eps         float64 `json:"adam-eps"`
	Clip        float64 `json:"clip"`
	// RouterAuxCoef scales the MoE load-balancing loss; -1: the config's
	// router_aux_loss_coef.
	RouterAuxCoef float64 `json:"router-aux-coef"`
	Seed          uint64  `json:"seed"`
	Init          string  `json:"init"`

	// LoRA (rank 0: full fine-tuning).
	LoRARank       int      `json:"lora-rank"`
	LoRAAlpha      float64  `json:"lora-alpha"` // 0: the rank (scale 1)
	LoRADropout    float64  `json:"lora-dropout"`
	LoRATargets    []string `json:"lora-targets"`
	LoRATrainNorms bool     `json:"lora-train-norms"`
	Export         string   `json:"export"` // merged, adapter or both (LoRA only)

	// System.
	Device  string `json:"device"`
	Threads int    `json:"threads"`
	DType   string `json:"dtype,omitempty"` // export dtype; "" = the source's
	// BF16Copies: full fine-tuning on CUDA with bf16 matmuls keeps bf16
	// copies of the weights made once per step (on), or casts each weight
	// per product (off: 2 bytes per weight less, same results); auto: on
	// when the run fits the device with them.
	BF16Copies string `json:"bf16-copies"`

	// Run.
	EvalEvery int  `json:"eval-every"` // -1: a tenth of Steps; 0: only at start and end
	EvalRows  int  `json:"eval-rows"`
	EvalMC    int  `json:"eval-mc"`
	SaveEvery int  `json:"save-every"` // -1: a fifth of Steps; 0: only at the end
	Keep      int  `json:"keep"`
	Resume    bool `json:"resume"`
	Force     bool `json:"force"`
	Quiet     bool `json:"quiet"`

	// Set names the settings given explicitly (flag names); on --resume only
	// these may replace the saved run's, and only those in Resumable.
	Set []string `json:"-"`
}

// Resumable are the settings a resumed run may change: its length and how
// it runs, never what it computes.
var Resumable = []string{"steps", "device", "threads", "eval-every", "save-every", "keep", "quiet", "resume", "out", "config", "recompute", "bf16-copies"}

// Defaults are the settings a plain `dllm convert SRC --data D --out O` uses.
func Defaults() Options {
	return Options{
		TextField: "text", Separator: "blank", EvalFraction: 0.05, SFTPad: "eos",
		Shift: true, Weighting: "elbo", CartP: 0.1, LossNorm: "masked", TMin: 1e-3,
		AnnealSteps: -1, TPer: "row", EmbedNoise: -1,
		Steps: 1000, SeqLen: 512, BatchSize: 8, GradAccum: 1, LR: 1e-4, MinLR: -1, Warmup: -1,
		LRSchedule: "cosine", DecayFrac: 0.2, WeightDecay: 0.1, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1, RouterAuxCoef: -1, Seed: 42,
		Init: "pretrained", LoRATargets: append([]string(nil), model.LoRATargets...), Export: "both", Device: "auto", BF16Copies: "auto", EvalEvery: -1, EvalRows: 32, EvalMC: 8, SaveEvery: -1, Keep: 2,
	}
}

// InputError is a run refused for its inputs: an option out of range or
// unknown, inconsistent flags, data that is missing or unusable, an output
// folder that cannot be used, a resume of an incompatible run. The command
// line exits 2 on it; failures while running are other errors.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// badInput is an InputError with a formatted message.
func badInput(format string, a ...any) error {
	return &InputError{fmt.Errorf(format, a...)}
}

// Resolve fills the derived defaults and checks every value, returning the
// first problem as an InputError whose message says what to change.
func (o *Options) Resolve() error {
	if err := o.resolve(); err != nil {
		return &InputError{err}
	}
	return nil
}

func (o *Options) resolve() error {
	switch {
	case o.Source == "":
		return fmt.Errorf("no source model: give the Hugging Face model directory to convert")
	case len(o.Data) == 0:
		return fmt.Errorf("no training data: pass --data with text or JSONL files or folders")
	case o.Out == "":
		return fmt.Errorf("no output directory: pass --out DIR")
	case o.Steps <= 0:
		return fmt.Errorf("--steps must be positive, got %d", o.Steps)
	case o.SeqLen < 2:
		return fmt.Errorf("--seq-len must be at least 2, got %d", o.SeqLen)
	case o.BatchSize <= 0:
		return fmt.Errorf("--batch-size must be positive, got %d", o.BatchSize)
	case o.GradAccum <= 0:
		return fmt.Errorf("--grad-accum must be positive, got %d", o.GradAccum)
	case !(o.LR > 0):
		return fmt.Errorf("--lr must be positive, got %g", o.LR)
	case o.Clip < 0:
		return fmt.Errorf("--clip must be >= 0 (0 disables clipping), got %g", o.Clip)
	case o.RouterAuxCoef < 0 && o.RouterAuxCoef != -1 || math.IsNaN(o.RouterAuxCoef) || math.IsInf(o.RouterAuxCoef, 0):
		return fmt.Errorf("--router-aux-coef must be >= 0 (0 turns the MoE load-balancing loss off; -1 takes router_aux_loss_coef from config.json), got %g", o.RouterAuxCoef)
	case o.Beta1 < 0 || o.Beta1 >= 1 || o.Beta2 < 0 || o.Beta2 >= 1:
		return fmt.Errorf("--beta1 and --beta2 must be in [0, 1)")
	case o.EvalFraction < 0 || o.EvalFraction >= 1:
		return fmt.Errorf("--eval-fraction must be in [0, 1), got %g", o.EvalFraction)
	case o.Keep < 1:
		return fmt.Errorf("--keep must be at least 1, got %d", o.Keep)
	}
	switch o.Init {
	case "pretrained", "random":
	default:
		return fmt.Errorf("--init must be pretrained or random, got %q", o.Init)
	}
	switch o.LRSchedule {
	case "cosine", "wsd", "constant":
	default:
		return fmt.Errorf("--lr-schedule must be cosine, wsd or constant, got %q", o.LRSchedule)
	}
	switch o.Device {
	case "auto", "cpu", "cuda":
	default:
		return fmt.Errorf("--device must be auto, cpu or cuda, got %q", o.Device)
	}
	switch o.BF16Copies {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("--bf16-copies must be auto, on or off, got %q", o.BF16Copies)
	}
	switch o.TPer {
	case "row", "block":
	default:
		return fmt.Errorf("--t-per must be row or block, got %q", o.TPer)
	}
	if err := o.resolveLoRA(); err != nil {
		return err
	}
	if o.DType != "" {
		if _, err := safetensors.ParseDType(o.DType); err != nil {
			return fmt.Errorf("--dtype: %v", err)
		}
	}
	switch o.SFTPad {
	case "eos", "none":
	default:
		return fmt.Errorf("--sft-pad must be eos or none, got %q", o.SFTPad)
	}
	if o.ChatTemplate != "" && !o.SFT {
		return fmt.Errorf("--chat-template is for SFT data: add --sft")
	}
	if o.SFT && o.SFTPad == "none" {
		// The padding is a document of its own: hidden from the example.
		o.DocMask = true
	}
	if _, _, err := o.TimeRange(); err != nil {
		return err
	}
	obj := o.Objective(0)
	if err := obj.Validate(); err != nil {
		return err
	}
	if o.BlockSchedule != "" {
		stages, err := anneal.ParseSchedule(o.BlockSchedule, o.SeqLen)
		if err != nil {
			return err
		}
		o.Steps = anneal.TotalSteps(stages)
		if o.AnnealSteps < 0 {
			// The block warm-up already leads from AR to diffusion.
			o.AnnealSteps = 0
		}
	}
	if o.AnnealSteps < 0 {
		o.AnnealSteps = o.Steps / 10
	}
	if o.MinLR < 0 {
		o.MinLR = o.LR / 10
	}
	if o.Warmup < 0 {
		o.Warmup = o.Steps / 100
	}
	if o.EvalEvery < 0 {
		o.EvalEvery = max(o.Steps/10, 1)
	}
	if o.SaveEvery < 0 {
		o.SaveEvery = max(o.Steps/5, 1)
	}
	o.Weighting = strings.ToLower(o.Weighting)
	return nil
}

// Objective is the diffusion loss the options describe (t over the full
// range, as evaluation uses it).
func (o *Options) Objective(mask int32) diffusion.Objective {
	return diffusion.Objective{MaskID: mask, Shift: o.Shift, Weighting: diffusion.Weighting(strings.ToLower(o.Weighting)),
		CartP: o.CartP, Norm: diffusion.Norm(o.LossNorm), TMin: o.TMin}
}

// TrainObjective is Objective with t drawn from --t-range when given.
func (o *Options) TrainObjective(mask int32) diffusion.Objective {
	obj := o.Objective(mask)
	if lo, hi, err := o.TimeRange(); err == nil && hi > 0 {
		obj.TMin, obj.TMax = lo, hi
	}
	return obj
}

// TimeRange parses --t-range "LO,HI" (0 < LO < HI <= 1); hi = 0 when unset.
func (o *Options) TimeRange() (lo, hi float64, err error) {
	if o.TRange == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(o.TRange, ",")
	bad := fmt.Errorf("--t-range wants LO,HI with 0 < LO < HI <= 1 (e.g. 0.3,0.8), got %q", o.TRange)
	if !ok {
		return 0, 0, bad
	}
	lo, err1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
	hi, err2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
	if err1 != nil || err2 != nil || !(lo > 0 && lo < hi && hi <= 1) {
		return 0, 0, bad
	}
	return lo, hi, nil
}

func (o *Options) resolveLoRA() error {
	switch o.Export {
	case "merged", "adapter", "both":
	default:
		return fmt.Errorf("--export must be merged, adapter or both, got %q", o.Export)
	}
	if o.LoRARank < 0 {
		return fmt.Errorf("--lora-rank must be >= 0 (0: full fine-tuning), got %d", o.LoRARank)
	}
	if o.LoRARank == 0 {
		if o.Export == "adapter" {
			return fmt.Errorf("--export adapter needs LoRA: set --lora-rank (full fine-tuning exports the merged model only)")
		}
		return nil
	}
	if o.Init == "random" {
		return fmt.Errorf("--lora-rank with --init random: LoRA adapts pretrained weights; drop one of them")
	}
	if o.LoRAAlpha == 0 {
		o.LoRAAlpha = float64(o.LoRARank)
	}
	lc := o.LoRA(nil)
	if err := lc.Validate(); err != nil {
		return err
	}
	o.LoRATargets = lc.Targets
	return nil
}

// LoRA is the adapter configuration of the options, training rows.
func (o *Options) LoRA(rows []int) model.LoRAConfig {
	return model.LoRAConfig{Rank: o.LoRARank, Alpha: o.LoRAAlpha, Dropout: o.LoRADropout,
		Targets: append([]string(nil), o.LoRATargets...), TrainRows: rows, TrainNorms: o.LoRATrainNorms}
}
