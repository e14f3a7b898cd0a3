package model

import (
	"fmt"
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

// Open reads the checkpoint in dir.
func Open(dir string, o OpenOptions) (*Checkpoint, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
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
			return nil, err
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

// AdapterError is Open's refusal of OpenOptions.Adapter (the folder is not
// a LoRA adapter dllm can apply); its message is the wrapped error's.
type AdapterError struct{ Err error }

func (e *AdapterError) Error() string { return e.Err.Error() }
func (e *AdapterError) Unwrap() error { return e.Err }

// LoadModel reads the weights onto be.
func (c *Checkpoint) LoadModel(be kernels.Backend) error {
	m, err := Load(c.Dir, be)
	if err != nil {
		return err
	}
	if HasNonFinite(be, m.Params) {
		be.Free(m.Params)
		return fmt.Errorf("the weights of %s hold NaN or infinite values: the checkpoint cannot be used (take an earlier checkpoint, or download or export it again)", c.Dir)
	}
	if c.adapter != nil {
		if m, err = c.adapter.Merge(m); err != nil {
			return err
		}
		if HasNonFinite(be, m.Params) {
			be.Free(m.Params)
			return fmt.Errorf("the adapter %s holds NaN or infinite values: it cannot be used", c.adapter.Dir)
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
