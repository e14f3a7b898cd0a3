package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

type tokenRef struct {
	ID    int    `json:"id"`
	Token string `json:"token"`
}

type tokenizerReport struct {
	Size     int                 `json:"size"`
	BOS      int                 `json:"bos"`
	BOSToken string              `json:"bos_token,omitempty"`
	EOS      int                 `json:"eos"`
	EOSToken string              `json:"eos_token,omitempty"`
	Pad      int                 `json:"pad"`
	PadToken string              `json:"pad_token,omitempty"`
	AddsBOS  bool                `json:"adds_bos"`
	Specials []tokenRef          `json:"specials"`
	Mask     *tokenizer.MaskPlan `json:"mask,omitempty"`
}

// inspectTokenizer loads dir's tokenizer and checks it against the model
// config: (nil, nil) when dir has no tokenizer.json.
func inspectTokenizer(dir string, cfg *model.Config) (*tokenizerReport, []model.Problem) {
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	problem := func(format string, a ...any) model.Problem {
		return model.Problem{Tensor: "tokenizer.json", Kind: "tokenizer", Detail: fmt.Sprintf(format, a...)}
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, []model.Problem{problem("%v", err)}
	}
	r := &tokenizerReport{Size: tok.Size(), BOS: tok.BOS(), EOS: tok.EOS(), Pad: tok.Pad(), AddsBOS: tok.AddsBOS(),
		BOSToken: tok.Token(tok.BOS()), EOSToken: tok.Token(tok.EOS()), PadToken: tok.Token(tok.Pad()), Specials: []tokenRef{}}
	for _, a := range tok.Specials() {
		r.Specials = append(r.Specials, tokenRef{a.ID, a.Content})
	}
	if cfg == nil {
		return r, nil
	}
	var problems []model.Problem
	if tok.Size() > cfg.Vocab {
		problems = append(problems, problem("the tokenizer emits ids up to %d but the embedding has vocab_size %d rows", tok.Size()-1, cfg.Vocab))
	} else if plan, err := tok.PlanMask(cfg.Vocab, ""); err != nil {
		problems = append(problems, problem("mask token: %v", err))
	} else {
		r.Mask = &plan
	}
	return r, problems
}

func printTokenizer(p func(k, format string, a ...any), t *tokenizerReport) {
	ref := func(tok string, id int) string {
		if id < 0 {
			return "none"
		}
		return fmt.Sprintf("%s=%d", tok, id)
	}
	p("tokenizer", "%d tokens (bos %s, eos %s, pad %s)", t.Size, ref(t.BOSToken, t.BOS), ref(t.EOSToken, t.EOS), ref(t.PadToken, t.Pad))
	if len(t.Specials) > 0 {
		var parts []string
		for i, s := range t.Specials {
			if i == 8 && len(t.Specials) > 10 {
				parts = append(parts, fmt.Sprintf("... (%d more)", len(t.Specials)-8))
				break
			}
			parts = append(parts, ref(s.Token, s.ID))
		}
		p("specials", "%s", strings.Join(parts, ", "))
	}
	if m := t.Mask; m != nil {
		switch m.Kind {
		case tokenizer.MaskNewRow:
			p("mask token", "new embedding row %d needed for %s", m.ID, m.Token)
		case tokenizer.MaskSpareRow:
			p("mask token", "spare embedding row %d as %s", m.ID, m.Token)
		default:
			p("mask token", "existing %s=%d", m.Token, m.ID)
		}
	}
}
