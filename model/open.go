package model

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/tokenizer"
)

// Checkpoint is a model folder opened for use, the one place convert, eval
// and generate read one: config.json (with its "dllm" block, Cfg.DLLM, for
// a converted model), the tokenizer with BOS and EOS settled, the ids that
// end a sample, and the model on a backend.
type Checkpoint struct {
	Dir string
	Cfg *Config
	// Tok is nil with OpenOptions.NoTokenizer. Its BOS is config.json's
	// bos_token_id when the tokenizer names none; its EOS is config.json's
	// (first) eos_token_id when there is one: pretraining documents end with
	// the model's EOS (Qwen's <|endoftext|>), not a chat turn's end.
	Tok *tokenizer.Tokenizer
	// EOS are the ids that end a sample: config.json's eos_token_id(s) and
	// the tokenizer's own EOS.
	EOS []int32
	// Model is nil when OpenOptions.Backend is nil (see LoadModel).
	Model *Model

	adapter *PEFTAdapter
}

// OpenOptions choose what Open reads.
type OpenOptions struct {
	// Backend receives the weights; nil reads config and tokenizer only.
	Backend kernels.Backend
	// NoTokenizer skips tokenizer.json (token ids in and out).
	NoTokenizer bool
	// Adapter is a PEFT LoRA adapter folder merged into the weights on
	// load; its tokenizer (with the mask token) and "dllm" block are used.
	Adapter string
}

// Open reads the checkpoint in dir. A folder without weights is refused
// (before its tokenizer is read) even when no Backend loads them.
func Open(dir string, o OpenOptions) (*Checkpoint, error) {
	if err := CheckDir(dir); err != nil {
		return nil, err
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	// The weights are what a folder must have most; name them missing first.
	if err := checkWeights(dir); err != nil {
		return nil, err
	}
	c := &Checkpoint{Dir: dir, Cfg: cfg}
	tokDir := dir
	if o.Adapter != "" {
		if c.adapter, err = LoadPEFT(o.Adapter); err != nil {
			return nil, &AdapterError{err}
		}
		c.adapter.Describe(cfg)
		tokDir = c.Find("tokenizer.json")
	}
	tokEOS := -1
	if !o.NoTokenizer {
		tok, err := tokenizer.Load(tokDir)
		if err != nil {
			return nil, tokenizerError(tokDir, err)
		}
		tokEOS = tok.EOS()
		if cfg.BOS >= 0 && tok.BOS() < 0 {
			tok.SetBOS(cfg.BOS)
		}
		if len(cfg.EOS) > 0 {
			tok.SetEOS(cfg.EOS[0])
		}
		c.Tok = tok
	}
	c.EOS = EOSSet(cfg, tokEOS)
	if o.Backend != nil {
		if err := c.LoadModel(o.Backend); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// DirError is the refusal of a model folder itself: not there, not a
// folder, no or unusable config.json, tokenizer or weights, or weights that
// do not match the config. Msg is the whole line: what is wrong and what to
// do. The command line exits 2 on it (bad input).
type DirError struct {
	Dir string
	Msg string
	Err error // the cause, if any
}

func (e *DirError) Error() string { return e.Msg }
func (e *DirError) Unwrap() error { return e.Err }

const (
	folderHint = "pass a Hugging Face model folder (config.json and *.safetensors)"
	folderKind = "a Hugging Face model folder holds config.json and *.safetensors"
)

// CheckDir refuses, with a *DirError, a dir that is not there, is not a
// folder or has no config.json.
func CheckDir(dir string) error {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &DirError{dir, fmt.Sprintf("%s: no such folder: %s", dir, folderHint), err}
	case err != nil:
		return &DirError{dir, fmt.Sprintf("cannot open %s: %v: %s", dir, unwrapPath(err), folderHint), err}
	case !st.IsDir():
		return &DirError{dir, fmt.Sprintf("%s is a file, not a folder: %s", dir, folderHint), nil}
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); errors.Is(err, fs.ErrNotExist) {
		return noConfig(dir, err)
	}
	return nil
}

// noConfig is the refusal of a folder without config.json.
func noConfig(dir string, err error) error {
	final := filepath.Join(dir, "final")
	if st, e := os.Stat(filepath.Join(final, "config.json")); e == nil && st.Mode().IsRegular() {
		return &DirError{dir, fmt.Sprintf("%s has no config.json: it looks like the --out folder of a dllm convert run; pass %s", dir, final), err}
	}
	return &DirError{dir, fmt.Sprintf("%s has no config.json: is it a model folder? (%s)", dir, folderKind), err}
}

// tokenizerError is tokenizer.Load's failure in a model folder as a
// *DirError.
func tokenizerError(dir string, err error) error {
	if _, e := os.Stat(filepath.Join(dir, "tokenizer.json")); errors.Is(e, fs.ErrNotExist) {
		return &DirError{dir, fmt.Sprintf("%s has no tokenizer.json: copy the model's tokenizer.json (and tokenizer_config.json) into it", dir), err}
	}
	return &DirError{dir, err.Error(), err}
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// AdapterError is Open's refusal of OpenOptions.Adapter (the folder is not
// a LoRA adapter dllm can apply); its message is the wrapped error's.
type AdapterError struct{ Err error }

func (e *AdapterError) Error() string { return e.Err.Error() }
func (e *AdapterError) Unwrap() error { return e.Err }

// adapterError is an *AdapterError of fmt.Errorf(format, a...).
func adapterError(format string, a ...any) error {
	return &AdapterError{fmt.Errorf(format, a...)}
}

// LoadModel reads the weights onto be.
func (c *Checkpoint) LoadModel(be kernels.Backend) error {
	m, err := Load(c.Dir, be)
	if err != nil {
		return err
	}
	if HasNonFinite(be, m.Params) {
		be.Free(m.Params)
		return &DirError{c.Dir, fmt.Sprintf("the weights of %s hold NaN or infinite values: the checkpoint cannot be used (take an earlier checkpoint, or download or export it again)", c.Dir), nil}
	}
	if c.adapter != nil {
		if m, err = c.adapter.Merge(m); err != nil {
			return err
		}
		if HasNonFinite(be, m.Params) {
			be.Free(m.Params)
			return &AdapterError{fmt.Errorf("the adapter %s holds NaN or infinite values: it cannot be used", c.adapter.Dir)}
		}
	}
	c.Model = m
	return nil
}

// Find is the folder whose file describes the opened model: the adapter's
// when it has that file (its tokenizer carries the mask token, its
// tokenizer_config.json the chat template, its generation_config.json the
// sampler defaults), else Dir.
func (c *Checkpoint) Find(file string) string {
	if c.adapter != nil {
		if st, err := os.Stat(filepath.Join(c.adapter.Dir, file)); err == nil && st.Mode().IsRegular() {
			return c.adapter.Dir
		}
	}
	return c.Dir
}

// PlanMask settles the mask token of a conversion from this checkpoint
// (override: --mask-token) and registers it in the tokenizer.
func (c *Checkpoint) PlanMask(override string) (tokenizer.MaskPlan, error) {
	p, err := c.Tok.PlanMask(c.Cfg.Vocab, override)
	if err != nil {
		return p, err
	}
	return p, c.Tok.ApplyMask(p)
}

// IsEOS reports whether id ends a sample.
func (c *Checkpoint) IsEOS(id int32) bool {
	for _, e := range c.EOS {
		if e == id {
			return true
		}
	}
	return false
}

// EOSSet is the set of tokens that end a sample: the config's
// eos_token_id(s) and the tokenizer's EOS (tokEOS < 0: none).
func EOSSet(cfg *Config, tokEOS int) []int32 {
	var eos []int32
	for _, e := range cfg.EOS {
		eos = append(eos, int32(e))
	}
	if tokEOS >= 0 {
		eos = append(eos, int32(tokEOS))
	}
	return eos
}
