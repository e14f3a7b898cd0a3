package corpus

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/tokenizer"
)

func chatml(t *testing.T, tok *tokenizer.Tokenizer) *tokenizer.ChatTemplate {
	t.Helper()
	ct, err := tokenizer.LoadChatTemplate(tok.Dir(), "../testdata/chat/chatml.jinja")
	if err != nil || ct == nil {
		t.Fatal(ct, err)
	}
	return ct
}

func ints(v []int32) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

func TestLoadSFTConversation(t *testing.T) {
	tok := charTokenizer(t, true)
	ct := chatml(t, tok)
	if ct.EndOfTurn() != "</s>" {
		t.Fatalf("end of turn %q", ct.EndOfTurn())
	}
	path := filepath.Join(t.TempDir(), "chat.jsonl")
	writeFile(t, path, `{"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "who"}, {"role": "assistant", "content": "a cat"}, {"role": "user", "content": "where"}, {"role": "assistant", "content": "home"}]}`+"\n"+
		`{"prompt": "say hi", "completion": " hi"}`+"\n")
	msgs := []tokenizer.Message{{Role: "system", Content: "be kind"}, {Role: "user", Content: "who"}, {Role: "assistant", Content: "a cat"}, {Role: "user", Content: "where"}, {Role: "assistant", Content: "home"}}
	const L = 160
	for _, pad := range []string{PadEOS, PadNone} {
		c, err := LoadSFT(tok, SFTOptions{Paths: []string{path}, SeqLen: L, Template: ct, Pad: pad})
		if err != nil {
			t.Fatal(err)
		}
		st := c.Stats.SFT
		if c.Train.Rows() != 3 || c.Eval != nil || st.Lines != 2 || st.Examples != 3 || st.CutRows != 0 {
			t.Fatalf("%s: rows %d, stats %+v", pad, c.Train.Rows(), st)
		}
		// Row k: the prompt is the conversation before assistant turn k
		// rendered with the generation prompt; the response is the turn
		// through its end-of-turn; then EOS padding.
		var wantPrompt, wantResp [][]int
		for _, i := range []int{2, 4} {
			p, _ := ct.Render(msgs[:i], true)
			wantPrompt = append(wantPrompt, tok.Encode(p, false))
			wantResp = append(wantResp, tok.Encode(msgs[i].Content+"</s>", false))
		}
		wantPrompt = append(wantPrompt, append([]int{tok.BOS()}, tok.Encode("say hi", false)...))
		wantResp = append(wantResp, append(tok.Encode(" hi", false), tok.EOS()))
		// The second turn's prompt holds the first answer as clean context.
		if !strings.Contains(tok.Decode(wantPrompt[1], false), "a cat</s>") {
			t.Fatalf("prompt of turn 2: %q", tok.Decode(wantPrompt[1], false))
		}
		ids, docs, fixed := make([]int32, L), make([]int32, L), make([]bool, L)
		var prompt, resp, padded int64
		for r := 0; r < 3; r++ {
			c.Train.Row(r, ids, docs)
			c.Train.Fixed(r, fixed)
			np, nr := len(wantPrompt[r]), len(wantResp[r])
			got := ints(ids)
			if !equalInts(got[:np], wantPrompt[r]) || !equalInts(got[np:np+nr], wantResp[r]) {
				t.Fatalf("%s row %d: %q", pad, r, tok.Decode(got, false))
			}
			for i := 0; i < L; i++ {
				isPad := i >= np+nr
				wantFixed := i < np || (isPad && pad == PadNone)
				if fixed[i] != wantFixed {
					t.Fatalf("%s row %d pos %d: fixed %v", pad, r, i, fixed[i])
				}
				if isPad && ids[i] != int32(tok.EOS()) {
					t.Fatalf("%s row %d pos %d: pad %d", pad, r, i, ids[i])
				}
				wantDoc := int32(0)
				if isPad && pad == PadNone {
					wantDoc = 1
				}
				if docs[i] != wantDoc {
					t.Fatalf("%s row %d pos %d: doc %d", pad, r, i, docs[i])
				}
			}
			prompt, resp, padded = prompt+int64(np), resp+int64(nr), padded+int64(L-np-nr)
		}
		if st.PromptTokens != prompt || st.ResponseTokens != resp || st.PadTokens != padded {
			t.Errorf("%s: stats %+v, want %d/%d/%d", pad, st, prompt, resp, padded)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSFTMasks draws the objective's masks over SFT batches: no prompt
// token is ever masked or scored, EOS padding is (with --sft-pad eos), and
// with shift a prompt position's logits may score the response after it.
func TestSFTMasks(t *testing.T) {
	tok := charTokenizer(t, true)
	ct := chatml(t, tok)
	path := filepath.Join(t.TempDir(), "chat.jsonl")
	writeFile(t, path, `{"messages": [{"role": "user", "content": "who is it"}, {"role": "assistant", "content": "a cat"}]}`+"\n"+
		`{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "dd"}]}`+"\n")
	const L = 96
	for _, pad := range []string{PadEOS, PadNone} {
		c, err := LoadSFT(tok, SFTOptions{Paths: []string{path}, SeqLen: L, Template: ct, Pad: pad})
		if err != nil {
			t.Fatal(err)
		}
		for _, shift := range []bool{false, true} {
			for _, w := range []diffusion.Weighting{diffusion.ELBO, diffusion.CART} {
				obj := diffusion.Objective{MaskID: 300, Shift: shift, Weighting: w, CartP: 0.1, Norm: diffusion.NormMasked, TMin: 1e-3}
				B := 3
				b := diffusion.NewBatch(B, L)
				b.Fixed = make([]bool, B*L)
				docs := make([]int32, B*L)
				rng := rand.New(rand.NewPCG(1, 2))
				var cur Cursor
				padMasked, respMasked := 0, 0
				for it := 0; it < 50; it++ {
					c.Train.NextBatchFixed(&cur, 7, b.X0, docs, b.Fixed, B)
					obj.DrawTimes(rng, b, false)
					obj.Mask(rng, b)
					obj.Score(b)
					for i := range b.Masked {
						if b.Masked[i] && b.Fixed[i] {
							t.Fatalf("pad %s shift %v: prompt position %d masked", pad, shift, i)
						}
						if !b.Masked[i] && b.XT[i] != b.X0[i] {
							t.Fatal("unmasked position changed")
						}
					}
					for k := 0; k < b.NMasked; k++ {
						n := int(b.Rows[k])
						if shift {
							n++
						}
						if b.Fixed[n] || !b.Masked[n] || b.Targets[k] != b.X0[n] {
							t.Fatalf("pad %s shift %v: scored position %d is fixed or unmasked", pad, shift, n)
						}
						isPad := b.X0[n] == int32(tok.EOS()) && n%L > 0 && b.X0[n-1] == int32(tok.EOS())
						if isPad {
							padMasked++
						} else {
							respMasked++
						}
					}
				}
				if respMasked == 0 || (pad == PadEOS) != (padMasked > 0) {
					t.Errorf("pad %s shift %v %s: %d response, %d padding positions scored", pad, shift, w, respMasked, padMasked)
				}
			}
		}
	}
}

func TestLoadSFTCut(t *testing.T) {
	tok := charTokenizer(t, true)
	ct := chatml(t, tok)
	path := filepath.Join(t.TempDir(), "chat.jsonl")
	long := strings.Repeat("x", 100)
	writeFile(t, path, `{"prompt": "p", "completion": "`+long+`"}`+"\n"+
		`{"prompt": "`+long+`", "completion": "y"}`+"\n"+
		`{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]}`+"\n")
	const L = 60
	c, err := LoadSFT(tok, SFTOptions{Paths: []string{path}, SeqLen: L, Template: ct})
	if err != nil {
		t.Fatal(err)
	}
	st := c.Stats.SFT
	// Row 1: 1 BOS + 2 prompt ("▁p") + 101 completion + EOS = 105, cut.
	// Row 2: its prompt alone (BOS + 101) is longer than a row: dropped
	// (and counted cut). Row 3 fits.
	if c.Train.Rows() != 2 || st.CutRows != 2 || st.DroppedRows != 1 || st.CutTokens != (105-L)+(1+101+2+1-L) {
		t.Fatalf("rows %d, stats %+v", c.Train.Rows(), st)
	}
	ids, fixed := make([]int32, L), make([]bool, L)
	c.Train.Row(0, ids, nil)
	c.Train.Fixed(0, fixed)
	if !fixed[0] || !fixed[2] || fixed[3] || fixed[L-1] || ids[L-1] == int32(tok.EOS()) {
		t.Fatalf("cut row: %v %v", ids, fixed)
	}
	// Eval fraction holds out whole lines.
	c, err = LoadSFT(tok, SFTOptions{Paths: []string{path}, SeqLen: L, Template: ct, EvalFraction: 0.34})
	if err != nil || c.Train.Rows() != 1 || c.Eval.Rows() != 1 || c.Stats.EvalDocuments != 1 {
		t.Fatalf("eval split: %v, %+v", err, c)
	}
}

func TestLoadSFTBadData(t *testing.T) {
	tok := charTokenizer(t, true)
	ct := chatml(t, tok)
	dir := t.TempDir()
	good := `{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}` + "\n"
	raising, err := tokenizer.LoadChatTemplate(tok.Dir(), writeTemp(t, dir, "raise.jinja", `{% if messages|length > 1 %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}x`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		line string
		ct   *tokenizer.ChatTemplate
		want string
	}{
		{`{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}`, ct, `bad.jsonl:2: message 1 has no "content"`},
		{`{"messages": [{"content": "hi"}]}`, ct, `bad.jsonl:2: message 1 has no "role"`},
		{`{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}`, ct, `bad.jsonl:2: message 2 has unknown role "bot" (want system, user or assistant)`},
		{`{"messages": []}`, ct, "bad.jsonl:2: empty conversation"},
		{`{"messages": [{"role": "user", "content": "q"}]}`, ct, "bad.jsonl:2: the conversation has no assistant turn"},
		{`{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}`, raising, "bad.jsonl:1: chat template " + dir + "/raise.jinja: Conversation roles must alternate"},
		{`{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}`, nil, "bad.jsonl:1: a \"messages\" row needs a chat template and SRC has none: pass --chat-template FILE"},
		{`{"prompt": "x"}`, ct, `bad.jsonl:2: an SFT row needs "messages" or both "prompt" and "completion"`},
		{`{"prompt": "x", "completion": 3}`, ct, `bad.jsonl:2: "prompt" and "completion" must be strings`},
		{`[1, 2]`, ct, "bad.jsonl:2: not a JSON object"},
	} {
		p := writeTemp(t, dir, "bad.jsonl", good+c.line+"\n")
		_, err := LoadSFT(tok, SFTOptions{Paths: []string{p}, SeqLen: 64, Template: c.ct, TemplateHint: "SRC"})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s:\n got %v\nwant %q", c.line, err, c.want)
		}
		if errors.Is(err, ErrNoChatTemplate) != (c.ct == nil) {
			t.Errorf("%s: %v; errors.Is(ErrNoChatTemplate) is %v", c.line, err, c.ct != nil)
		}
	}
	if _, err := LoadSFT(tok, SFTOptions{Paths: []string{writeTemp(t, dir, "a.txt", "text")}, SeqLen: 64, Template: ct}); err == nil || !strings.Contains(err.Error(), "SFT data is JSONL") {
		t.Errorf("txt: %v", err)
	}
	if _, err := LoadSFT(tok, SFTOptions{Paths: []string{writeTemp(t, dir, "ok.jsonl", good)}, SeqLen: 64, Template: ct, Pad: "zeros"}); err == nil || !strings.Contains(err.Error(), "unknown SFT padding") {
		t.Errorf("pad: %v", err)
	}
}

func writeTemp(t *testing.T, dir, name, s string) string {
	p := filepath.Join(dir, name)
	writeFile(t, p, s)
	return p
}

// TestLoadSFTRealTemplates: with the Qwen3 and Llama-3 templates the
// special tokens of the rendered text are single added-token ids, the
// response ends with the end-of-turn id, and Llama-3's trailing assistant
// header (its template always adds one) is not part of the turn.
func TestLoadSFTRealTemplates(t *testing.T) {
	shared := filepath.Join("..", "..", "shared", "tokenizers")
	if _, err := os.Stat(shared); err != nil {
		t.Skipf("reference material %s is absent (a plain clone): skipping", shared)
	}
	path := filepath.Join(t.TempDir(), "chat.jsonl")
	writeFile(t, path, `{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye now."}]}`+"\n")
	for _, c := range []struct{ name, eot, wantResp2 string }{
		{"qwen3", "<|im_end|>", "<think>\n\n</think>\n\nBye now.<|im_end|>"},
		{"llama3", "<|eot_id|>", "Bye now.<|eot_id|>"},
	} {
		dir := filepath.Join(shared, c.name)
		tok, err := tokenizer.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		ct, err := tokenizer.LoadChatTemplate(dir, "")
		if err != nil || ct == nil {
			t.Fatal(ct, err)
		}
		const L = 96
		co, err := LoadSFT(tok, SFTOptions{Paths: []string{path}, SeqLen: L, Template: ct})
		if err != nil {
			t.Fatal(err)
		}
		eotID, ok := tok.ID(c.eot)
		if !ok || co.Train.Rows() != 2 {
			t.Fatalf("%s: eot %v, rows %d", c.name, ok, co.Train.Rows())
		}
		ids, fixed := make([]int32, L), make([]bool, L)
		for r := 0; r < 2; r++ {
			co.Train.Row(r, ids, nil)
			co.Train.Fixed(r, fixed)
			var prompt, resp []int
			for i := 0; i < L; i++ {
				if fixed[i] {
					prompt = append(prompt, int(ids[i]))
				} else if int(ids[i]) != tok.EOS() || len(resp) == 0 || resp[len(resp)-1] != eotID {
					resp = append(resp, int(ids[i]))
				}
			}
			if resp[len(resp)-1] != eotID {
				t.Fatalf("%s row %d: response %q does not end with %s", c.name, r, tok.Decode(resp, false), c.eot)
			}
			// Every special token of the prompt is one id.
			n := 0
			for _, id := range prompt {
				if tok.IsSpecial(id) {
					n++
				}
			}
			if want := strings.Count(tok.Decode(prompt, false), "<|"); n != want || n == 0 {
				t.Fatalf("%s row %d: %d special ids for %d special tokens in %q", c.name, r, n, want, tok.Decode(prompt, false))
			}
			if r == 1 && tok.Decode(resp, false) != c.wantResp2 {
				t.Fatalf("%s: second response %q, want %q", c.name, tok.Decode(resp, false), c.wantResp2)
			}
		}
	}
}
