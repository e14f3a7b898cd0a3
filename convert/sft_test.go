package convert

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels/cpu"
	"github.com/dllm-dev/dllm/tokenizer"
)

// writeChat writes n small conversations (some multi-turn, one too long
// for a row of 160 tokens).
func writeChat(t *testing.T, n int) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < n; i++ {
		msgs := []tokenizer.Message{{Role: "user", Content: fmt.Sprintf("who is cat %d", i)}, {Role: "assistant", Content: "a cat"}}
		if i%3 == 0 {
			msgs = append(msgs, tokenizer.Message{Role: "user", Content: "and then"}, tokenizer.Message{Role: "assistant", Content: "it sat"})
		}
		if i == 1 {
			msgs[1].Content = strings.Repeat("the cat sat on a mat ", 12)
		}
		line, _ := json.Marshal(map[string]any{"messages": msgs})
		b.Write(line)
		b.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "chat.jsonl")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sftOptions(t *testing.T) Options {
	o := tinyOptions(writeChat(t, 12), filepath.Join(t.TempDir(), "run"))
	o.SFT, o.ChatTemplate, o.SeqLen, o.EvalFraction = true, "../testdata/chat/chatml.jinja", 160, 0.25
	return o
}

// TestSFTTrainingMasks runs the trainer's own micro-batches (plain, CART,
// block diffusion, --t-range) and checks that no prompt position is ever
// masked or scored while EOS padding is.
func TestSFTTrainingMasks(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*Options)
	}{
		{"elbo", func(*Options) {}},
		{"cart-trange", func(o *Options) { o.Weighting, o.TRange = "cart", "0.3,0.8" }},
		{"block", func(o *Options) { o.BlockSchedule = "4:4" }},
		{"noshift-padnone", func(o *Options) { o.Shift, o.SFTPad = false, "none" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := sftOptions(t)
			c.change(&o)
			if err := o.Resolve(); err != nil {
				t.Fatal(err)
			}
			r := &run{opt: o, be: cpu.New(2), log: io.Discard, ctx: context.Background()}
			if err := r.prepare(); err != nil {
				t.Fatal(err)
			}
			defer r.close()
			if !r.data.Train.SFT() || r.summary.SFT == nil || r.summary.SFT.CutRows != 1 {
				t.Fatalf("sft stats %+v", r.summary.SFT)
			}
			B, L := o.BatchSize, o.SeqLen
			r.batch = diffusion.NewBatch(B, L)
			r.batch.Fixed = make([]bool, B*L)
			r.docs = make([]int32, B*L)
			defer r.freeActs()
			eos := int32(r.tok.EOS())
			var fixed, pad, resp int
			for step := 0; step < 4; step++ {
				vis, block := r.stepRule(step)
				if (c.name == "block") != (block > 0) {
					t.Fatalf("block %d", block)
				}
				if _, _, _, err := r.micro(step, vis, block); err != nil {
					t.Fatal(err)
				}
				b := r.batch
				for i := range b.Masked {
					if b.Fixed[i] {
						fixed++
						if b.Masked[i] {
							t.Fatalf("prompt position %d masked", i)
						}
					}
				}
				for k := 0; k < b.NMasked; k++ {
					n := int(b.Rows[k])
					if o.Shift {
						n++
					}
					if b.Fixed[n] || !b.Masked[n] {
						t.Fatalf("scored position %d is a prompt position", n)
					}
					if b.X0[n] == eos && b.X0[n-1] == eos {
						pad++
					} else {
						resp++
					}
				}
				if o.TRange != "" {
					for _, tb := range b.T {
						if tb < 0.3 || tb > 0.8 {
							t.Fatalf("t %g outside --t-range", tb)
						}
					}
				}
			}
			if fixed == 0 || resp == 0 || (o.SFTPad == "eos") != (pad > 0) {
				t.Fatalf("%d fixed positions, %d response and %d padding positions scored", fixed, resp, pad)
			}
		})
	}
}

// TestSFTRun: a whole --sft run evaluates per response(+padding) token,
// records the cuts in summary.json and exports the chat template it used.
func TestSFTRun(t *testing.T) {
	o := sftOptions(t)
	sum, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	st := sum.SFT
	if st == nil || st.CutRows != 1 || st.Lines != 12 || st.Examples != 16 {
		t.Fatalf("sft stats %+v", st)
	}
	raw, err := os.ReadFile(filepath.Join(o.Out, "summary.json"))
	if err != nil || !strings.Contains(string(raw), `"cut_rows": 1`) {
		t.Fatalf("summary.json: %v\n%s", err, raw)
	}
	// Eval scores only what is maskable: 3 held-out conversations, their
	// response and padding tokens.
	if sum.After == nil || sum.After.Tokens == 0 || sum.After.Tokens >= int64(sum.After.Rows*o.SeqLen) {
		t.Fatalf("eval %+v", sum.After)
	}
	ct, err := tokenizer.LoadChatTemplate(filepath.Join(o.Out, "final"), "")
	src, _ := os.ReadFile(o.ChatTemplate)
	if err != nil || ct == nil || ct.Source != string(src) {
		t.Fatalf("exported chat template: %v %v", ct, err)
	}
	var cfg struct {
		DLLM struct{ Objective string } `json:"dllm"`
	}
	b, _ := os.ReadFile(filepath.Join(o.Out, "final", "config.json"))
	if json.Unmarshal(b, &cfg); cfg.DLLM.Objective != "masked-diffusion-sft" {
		t.Fatalf("objective %q", cfg.DLLM.Objective)
	}
}

func TestSFTOptionErrors(t *testing.T) {
	for _, c := range []struct {
		change func(*Options)
		want   string
	}{
		{func(o *Options) { o.SFTPad = "zero" }, "--sft-pad must be eos or none"},
		{func(o *Options) { o.TRange = "0.8,0.3" }, "--t-range wants LO,HI"},
		{func(o *Options) { o.TRange = "0.3" }, "--t-range wants LO,HI"},
		{func(o *Options) { o.SFT = false }, "--chat-template is for SFT data: add --sft"},
	} {
		o := sftOptions(t)
		c.change(&o)
		if err := o.Resolve(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want %q", err, c.want)
		}
	}
	// messages without a template: the line and the fix
	o := sftOptions(t)
	o.ChatTemplate = ""
	_, err := Run(context.Background(), o, cpu.New(2), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "chat.jsonl:1: a \"messages\" row needs a chat template and ../testdata/tiny/llama has none: pass --chat-template FILE") {
		t.Fatalf("no template: %v", err)
	}
}
