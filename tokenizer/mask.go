package tokenizer

import (
	"fmt"
	"strconv"
	"strings"
)

// Mask-token kinds of a MaskPlan (DESIGN.md §3).
const (
	MaskExisting = "existing"  // the tokenizer has the token already
	MaskSpareRow = "spare-row" // a free embedding row (vocab_size > tokenizer size)
	MaskNewRow   = "new-row"   // the embedding needs one more row
)

// DefaultMaskToken is the name a new mask token is registered under.
const DefaultMaskToken = "<|mask|>"

// MaskPlan says where the diffusion mask token comes from.
type MaskPlan struct {
	Kind  string `json:"kind"` // "existing" | "spare-row" | "new-row"
	ID    int    `json:"id"`
	Token string `json:"token"`
}

// maskNames are the mask tokens of known models, in order of preference:
// Dream (<|mask|>), LLaDA (<|mdm_mask|>), BERT/RoBERTa style and others.
var maskNames = []string{"<|mask|>", "<|mdm_mask|>", "<mask>", "[MASK]", "<|MASK|>", "<MASK>", "<|mask_token|>"}

// MaskToken returns the tokenizer's own mask token: mask_token of
// tokenizer_config.json, else the first of the known names it has.
func (t *Tokenizer) MaskToken() (string, int, bool) {
	if t.mask != "" {
		if id, ok := t.ID(t.mask); ok {
			return t.mask, id, true
		}
	}
	if t.configMask != "" {
		if id, ok := t.ID(t.configMask); ok {
			return t.configMask, id, true
		}
	}
	for _, n := range maskNames {
		if id, ok := t.ID(n); ok {
			return n, id, true
		}
	}
	return "", -1, false
}

// PlanMask decides the mask token for a model whose embedding has
// embeddingRows rows. override, when not empty, is a numeric id (when it
// is all digits) or a token string the user names; an id or name the
// tokenizer lacks is registered as a new token (at the next free id, or the
// id given when it is a spare embedding row). PlanMask does not change the
// tokenizer (see ApplyMask).
func (t *Tokenizer) PlanMask(embeddingRows int, override string) (MaskPlan, error) {
	size := t.Size()
	if embeddingRows < size {
		return MaskPlan{}, fmt.Errorf("the tokenizer emits %d ids but the embedding has only %d rows", size, embeddingRows)
	}
	fresh := func(token string, id int) (MaskPlan, error) {
		if id == embeddingRows {
			return MaskPlan{MaskNewRow, id, token}, nil
		}
		return MaskPlan{MaskSpareRow, id, token}, nil
	}
	if override = strings.TrimSpace(override); override != "" {
		// All digits: an id (vocabularies have tokens "0".."9" too).
		if id, err := strconv.Atoi(override); err == nil {
			switch {
			case id < 0:
				return MaskPlan{}, fmt.Errorf("mask token id %d is negative", id)
			case id < size:
				if t.Token(id) == "" {
					return MaskPlan{}, fmt.Errorf("mask token id %d has no token in the tokenizer", id)
				}
				return MaskPlan{MaskExisting, id, t.Token(id)}, nil
			case id == size || (id > size && id < embeddingRows):
				return fresh(DefaultMaskToken, id)
			default:
				return MaskPlan{}, fmt.Errorf("mask token id %d is beyond the embedding (%d rows) and not the next free id %d", id, embeddingRows, size)
			}
		}
		if id, ok := t.ID(override); ok {
			if id >= embeddingRows {
				return MaskPlan{}, fmt.Errorf("mask token %s=%d is beyond the embedding (%d rows)", override, id, embeddingRows)
			}
			return MaskPlan{MaskExisting, id, override}, nil
		}
		if strings.ContainsAny(override, " \t\r\n") {
			return MaskPlan{}, fmt.Errorf("mask token %q is not in the vocabulary and cannot be registered (it contains whitespace)", override)
		}
		return fresh(override, size)
	}
	if tok, id, ok := t.MaskToken(); ok {
		if id >= embeddingRows {
			return MaskPlan{}, fmt.Errorf("mask token %s=%d is beyond the embedding (%d rows)", tok, id, embeddingRows)
		}
		return MaskPlan{MaskExisting, id, tok}, nil
	}
	if _, ok := t.ID(DefaultMaskToken); ok {
		// unreachable: MaskToken found it
		return MaskPlan{}, fmt.Errorf("internal: %s", DefaultMaskToken)
	}
	return fresh(DefaultMaskToken, size)
}

// ApplyMask registers the plan's token when it is new and records it as the
// mask token (Save writes it as mask_token to tokenizer_config.json).
func (t *Tokenizer) ApplyMask(p MaskPlan) error {
	if p.Kind != MaskExisting {
		if err := t.AddSpecialToken(p.Token, p.ID); err != nil {
			return err
		}
	} else if id, ok := t.ID(p.Token); !ok || id != p.ID {
		return fmt.Errorf("mask token %q is not id %d in the tokenizer", p.Token, p.ID)
	}
	t.mask = p.Token
	return nil
}

// MaskID returns the id of the mask token (after ApplyMask, or the
// tokenizer's own), -1 when there is none.
func (t *Tokenizer) MaskID() int {
	if _, id, ok := t.MaskToken(); ok {
		return id
	}
	return -1
}

// AddSpecialToken registers an added special token (lstrip/rstrip/
// single_word false, normalized false). Registering the same content at the
// same id again is a no-op.
func (t *Tokenizer) AddSpecialToken(content string, id int) error {
	if content == "" {
		return fmt.Errorf("cannot add an empty token")
	}
	if id < 0 {
		return fmt.Errorf("cannot add token %q at negative id %d", content, id)
	}
	if old, ok := t.ID(content); ok {
		if old == id {
			return nil
		}
		return fmt.Errorf("token %q already has id %d", content, old)
	}
	if id < len(t.tokens) && (t.tokens[id] != "" || t.inVocab[id]) {
		return fmt.Errorf("id %d is already token %q", id, t.tokens[id])
	}
	a := AddedToken{ID: id, Content: content, Special: true}
	t.registerAdded(a)
	t.match = newMatcher(t.added)
	t.newTokens = append(t.newTokens, a)
	return nil
}
