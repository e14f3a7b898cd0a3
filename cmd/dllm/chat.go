package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

// chatSession answers conversations with a model: the messages rendered
// with the generation prompt, decoded, cut at the end of the turn.
type chatSession struct {
	g    *generateFlags
	tok  *tokenizer.Tokenizer
	ct   *tokenizer.ChatTemplate
	m    *model.Model
	be   kernels.Backend
	info diffusion.Info
	stop []int32 // EOS ids and the end-of-turn token
	cfg  *model.Config
	// mem is the memory measured before the weights were loaded, that each
	// turn's decoding must fit; fix says what to lower when it does not.
	mem memBudget
	fix string
}

// openChat opens the model in dir for a conversation that starts with
// first (nil: empty), refusing before the weights are loaded a first turn
// whose decoding does not fit the memory.
func openChat(cmd *cobra.Command, dir string, g *generateFlags, first []tokenizer.Message, fix string) (*chatSession, error) {
	ck, err := model.Open(dir, model.OpenOptions{Adapter: g.adapter})
	if err != nil {
		return nil, err
	}
	g.defaults(cmd, ck.Find("generation_config.json"))
	ct, err := loadChatTemplate(ck.Find("tokenizer_config.json"), g.chatTemplate)
	if err != nil {
		return nil, err
	}
	s := &chatSession{g: g, tok: ck.Tok, ct: ct, cfg: ck.Cfg, fix: fix}
	if !g.ar {
		if s.info, err = diffusion.InfoFrom(ck.Cfg); err != nil {
			return nil, err
		}
	}
	s.stop = ck.EOS
	if id, ok := s.tok.ID(ct.EndOfTurn()); ok && ct.EndOfTurn() != "" {
		s.stop = append(s.stop, int32(id))
	}
	if s.be, err = openBackend(g.device, g.threads, cmd.ErrOrStderr()); err != nil {
		return nil, err
	}
	s.mem = budgetOf(s.be)
	if first != nil {
		_, err = s.prompt(first)
	} else {
		err = s.check(0) // no turn yet: the answer alone
	}
	if err == nil {
		err = ck.LoadModel(s.be)
	}
	if err != nil {
		s.be.Close()
		return nil, err
	}
	s.m = ck.Model
	return s, nil
}

func (s *chatSession) Close() { s.be.Close() }

// check refuses a turn after promptLen tokens that the settings, the
// model's context or the memory do not allow.
func (s *chatSession) check(promptLen int) error {
	if err := s.g.check(s.cfg, s.g.ar, 1, promptLen); err != nil {
		return err
	}
	d := s.g.decoding(s.info, promptLen)
	d.batch = 1 // one answer, whatever generate --chat's --batch
	return s.mem.checkDecoding(s.cfg, d, s.fix)
}

// prompt is msgs rendered with the generation prompt and encoded, once
// check allows it.
func (s *chatSession) prompt(msgs []tokenizer.Message) ([]int32, error) {
	text, err := s.ct.Render(msgs, true)
	if err != nil {
		return nil, err
	}
	var prompt []int32
	for _, id := range s.tok.Encode(text, false) {
		prompt = append(prompt, int32(id))
	}
	return prompt, s.check(len(prompt))
}

// reply generates the assistant's answer to msgs.
func (s *chatSession) reply(msgs []tokenizer.Message) (string, error) {
	prompt, err := s.prompt(msgs)
	if err != nil {
		return "", err
	}
	return s.answer(prompt)
}

// answer decodes the answer after prompt, cut at the end of the turn.
func (s *chatSession) answer(prompt []int32) (string, error) {
	g := s.g
	var out []int32
	if g.ar {
		res, err := s.m.GenerateAR(prompt, model.AROptions{GenLen: g.genLen, Batch: 1, Seed: g.seed,
			Sampling: g.sampling(), StopAtEOS: true, EOS: s.stop})
		if err != nil {
			return "", err
		}
		out = res.Tokens[0]
	} else {
		opt := g.options()
		opt.Seed, opt.Batch, opt.EOS, opt.StopAtEOS, opt.NoCache = g.seed, 1, s.stop, true, g.noCache
		smp, err := diffusion.NewSampler(s.m, s.info, opt)
		if err != nil {
			return "", err
		}
		res, err := smp.Generate(prompt)
		smp.Free()
		if err != nil {
			return "", err
		}
		out = res.Tokens[0]
	}
	ids := make([]int, 0, len(out))
	for _, t := range out {
		if s.isStop(t) {
			break
		}
		ids = append(ids, int(t))
	}
	answer := s.tok.Decode(ids, true)
	if eot := s.ct.EndOfTurn(); eot != "" {
		// An end-of-turn the tokenizer spells in several tokens.
		answer, _, _ = strings.Cut(answer, eot)
	}
	return strings.TrimSpace(answer), nil
}

func (s *chatSession) isStop(t int32) bool {
	for _, e := range s.stop {
		if e == t {
			return true
		}
	}
	return false
}

// runChatGenerate is generate --chat: one answer to --prompt (after
// --system), printed alone.
func runChatGenerate(cmd *cobra.Command, dir string, g *generateFlags) error {
	if g.ids != "" {
		return &exitError{2, fmt.Errorf("--chat takes a text --prompt, not --ids")}
	}
	text, err := readPrompt(cmd, g)
	if err != nil {
		return err
	}
	if strings.TrimSpace(text) == "" {
		return &exitError{2, fmt.Errorf("--chat needs a --prompt (or the question on stdin)")}
	}
	var msgs []tokenizer.Message
	if g.system != "" {
		msgs = append(msgs, tokenizer.Message{Role: "system", Content: g.system})
	}
	msgs = append(msgs, tokenizer.Message{Role: "user", Content: text})
	s, err := openChat(cmd, dir, g, msgs, "lower --gen-len or shorten the prompt")
	if err != nil {
		return err
	}
	defer s.Close()
	answer, err := s.reply(msgs)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(cmd.OutOrStdout(), answer)
	return err
}

func newChatCmd() *cobra.Command {
	var g generateFlags
	cmd := &cobra.Command{
		Use:   "chat DIR",
		Short: "Talk to a model in the terminal, turn by turn",
		Long: `chat reads one user message per line and prints the model's answer,
keeping the conversation: each answer is generated from the whole
conversation rendered with the chat template (DIR's, or --chat-template)
and its generation prompt, and cut at the end of the turn. /reset starts
over; /exit or end of input (Ctrl-D) ends. Works with stdin not a terminal
too (one message per line, answers only on stdout). A turn beyond the model's
context, or whose decoding would not fit the memory measured at the start,
is refused (on a terminal the message is dropped and the chat goes on:
/reset, or a shorter one).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runChat(cmd, args[0], &g) },
	}
	f := cmd.Flags()
	f.StringVar(&g.system, "system", "", "system message at the start of the conversation")
	f.StringVar(&g.chatTemplate, "chat-template", "", "Jinja chat template file (default: DIR's tokenizer_config.json)")
	addDecodeFlags(f, &g)
	return cmd
}

func runChat(cmd *cobra.Command, dir string, g *generateFlags) error {
	s, err := openChat(cmd, dir, g, nil, "lower --gen-len or shorten the conversation (/reset starts over)")
	if err != nil {
		return err
	}
	defer s.Close()
	in, out, errw := cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
	tty := false
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		tty = true
		fmt.Fprintln(errw, "chat: one message per line; /reset starts over, /exit or Ctrl-D ends")
	}
	var msgs []tokenizer.Message
	reset := func() {
		msgs = msgs[:0]
		if g.system != "" {
			msgs = append(msgs, tokenizer.Message{Role: "system", Content: g.system})
		}
	}
	reset()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for {
		if tty {
			fmt.Fprint(errw, "> ")
		}
		if !sc.Scan() {
			break
		}
		line := strings.TrimSpace(sc.Text())
		switch line {
		case "":
			continue
		case "/exit", "/quit":
			return nil
		case "/reset":
			reset()
			continue
		}
		msgs = append(msgs, tokenizer.Message{Role: "user", Content: line})
		prompt, err := s.prompt(msgs)
		if err != nil && tty {
			// The conversation stays as it was: /reset, or a shorter message.
			fmt.Fprintf(errw, "dllm: %v\n", err)
			msgs = msgs[:len(msgs)-1]
			continue
		}
		if err != nil {
			return err
		}
		answer, err := s.answer(prompt)
		if err != nil {
			return err
		}
		msgs = append(msgs, tokenizer.Message{Role: "assistant", Content: answer})
		if _, err := fmt.Fprintln(out, answer); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && err != io.EOF {
		return fmt.Errorf("reading stdin: %v", err)
	}
	return nil
}
