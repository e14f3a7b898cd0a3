package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/kernels"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/serve"
)

type serveFlags struct {
	host, device, apiKey, name, chatTemplate string
	adapter                                  string
	port, threads, maxQueue, maxBatch        int
	maxTokens, maxLen                        int
	maxBody                                  int64
	timeout, grace                           time.Duration
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve DIR",
		Short: "Serve a diffusion model over an OpenAI-compatible HTTP API",
		Long: `serve answers OpenAI's /v1/completions, /v1/chat/completions (with the
model's chat template) and /v1/models, and /health, for the diffusion
checkpoint in DIR. Requests take OpenAI's fields (prompt or messages,
max_tokens, temperature, top_p, seed, stop, n, stream) and the sampler's
(steps, block_length, alg, alg_temp, threshold, top_k, stop_at_eos), with the
model's generation_config.json as defaults: a request gives the tokens
'dllm generate --stop-at-eos' gives with the same settings. Requests wait in
one queue; those with the same settings and prompt length are decoded
together, up to --max-batch rows, each as it would be alone. Before the
weights are loaded, --max-batch rows of --max-model-len tokens must fit the
memory; without it, serve takes the model's positions or, when those do not
fit, the longest requests that do (one line on stderr says how long). A
request whose rows would not fit gets a 400.

SIGINT or SIGTERM stops accepting, lets requests in flight finish for
--shutdown-timeout, cancels the rest and exits 0.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runServe(cmd, args[0], &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to listen on")
	fl.IntVar(&f.port, "port", 8000, "port to listen on (0: any free port)")
	fl.StringVar(&f.device, "device", "auto", "auto, cpu or cuda")
	fl.IntVar(&f.threads, "threads", 0, "CPU threads (0: all)")
	fl.StringVar(&f.apiKey, "api-key", os.Getenv("DLLM_API_KEY"), "require \"Authorization: Bearer KEY\" (default: $DLLM_API_KEY)")
	fl.StringVar(&f.name, "name", "", "model id in the API (default: DIR's base name)")
	fl.StringVar(&f.chatTemplate, "chat-template", "", "Jinja file (or JSON with chat_template) instead of DIR's template")
	fl.IntVar(&f.maxQueue, "max-queue", 64, "requests waiting or running at once; more get 503")
	fl.IntVar(&f.maxBatch, "max-batch", 8, "rows decoded together in one forward (1: no batching)")
	fl.IntVar(&f.maxTokens, "max-tokens", 0, "largest max_tokens a request may ask for (0: the model's positions); a request without max_tokens gets the model's default, cut to it")
	fl.IntVar(&f.maxLen, "max-model-len", 0, "largest prompt + max_tokens of a request, --max-batch rows of which must fit the memory (0: the model's positions, or the longest that fits)")
	fl.Int64Var(&f.maxBody, "max-body", 1<<20, "largest request body in bytes (at least 1024); more get 413")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Minute, "per-request limit, queueing included (0: none)")
	fl.DurationVar(&f.grace, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long requests in flight may take to finish")
	adapterFlag(fl, &f.adapter)
	return cmd
}

// openServer loads the model in dir for the server, once --max-batch rows
// of the longest request fit the memory: --max-model-len, else the model's
// positions or, when they do not fit, the longest length that does. Each
// request is checked when it comes (its n rows may be more, and a model
// without max_position_embeddings has no longest).
func openServer(cmd *cobra.Command, dir string, f *serveFlags) (*serve.Server, kernels.Backend, error) {
	ck, err := model.Open(dir, model.OpenOptions{Adapter: f.adapter})
	if err != nil {
		return nil, nil, err
	}
	info, err := diffusion.InfoFrom(ck.Cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := f.checkLimits(ck.Cfg.MaxPositions, info.Shift); err != nil {
		return nil, nil, err
	}
	be, err := openBackend(f.device, f.threads, cmd.ErrOrStderr())
	if err != nil {
		return nil, nil, err
	}
	mem := budgetOf(be)
	fits := func(rows, tokens int, fix string) error {
		return mem.checkDecoding(ck.Cfg, decoding{info: info, batch: rows, genLen: tokens, threads: f.threads}, fix)
	}
	n := ck.Cfg.MaxPositions
	if f.maxLen > 0 && (n == 0 || f.maxLen < n) {
		n = f.maxLen
	}
	err = fits(f.maxBatch, max(n, 1), "lower --max-batch or --max-model-len")
	if err != nil && f.maxLen == 0 && n > 1 && fits(f.maxBatch, 1, "") == nil {
		// The model's positions were not asked for: serve the longest
		// requests that fit (a long-context model's rarely do).
		lo, hi := 1, n // lo fits, hi does not
		for hi-lo > 1 {
			if mid := (lo + hi) / 2; fits(f.maxBatch, mid, "") == nil {
				lo = mid
			} else {
				hi = mid
			}
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "dllm serve: --max-batch %d rows of the model's %d positions do not fit the memory (%s, %s): requests of up to %d tokens (prompt and max_tokens) are served, longer ones get a 400; --max-model-len sets a limit, checked here\n",
			f.maxBatch, n, model.FormatBytes(mem.avail), mem.source, lo)
		n, err = lo, nil
	}
	if err == nil {
		err = ck.LoadModel(be)
	}
	var srv *serve.Server
	if err == nil {
		request := func(rows, tokens int) error {
			if rows <= f.maxBatch && tokens <= n {
				return nil // within what was checked above
			}
			return fits(rows, tokens, "lower max_tokens or n, or shorten the prompt")
		}
		srv, err = serve.New(ck, serve.Config{Name: f.name, APIKey: f.apiKey, MaxQueue: f.maxQueue, MaxBatch: f.maxBatch,
			MaxTokens: f.maxTokens, MaxLen: f.maxLen, Timeout: f.timeout, MaxBody: f.maxBody, Log: cmd.ErrOrStderr(),
			ChatTemplate: f.chatTemplate, Fits: request, FitLen: n})
	}
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	return srv, be, nil
}

// checkLimits refuses --max-tokens and --max-model-len that no request
// could meet: beyond the model's positions (0: not known yet), or leaving no
// room for one generated token and the prompt token a shift model needs.
func (f *serveFlags) checkLimits(positions int, shift bool) error {
	bad := func(format string, a ...any) error { return &exitError{2, fmt.Errorf(format, a...)} }
	if positions > 0 && f.maxLen > positions {
		return bad("--max-model-len %d is beyond the model's %d positions (max_position_embeddings): lower it (0: the model's)", f.maxLen, positions)
	}
	limit, what := positions, "the model's positions"
	if f.maxLen > 0 {
		limit, what = f.maxLen, "--max-model-len"
	}
	minPrompt := 0
	if shift {
		minPrompt = 1 // a shift model predicts each token from the one before
	}
	if limit > 0 && limit <= minPrompt {
		return bad("--max-model-len %d leaves no room to generate (this model needs a prompt of at least one token): raise it", limit)
	}
	if limit > 0 && f.maxTokens > limit-minPrompt {
		if minPrompt > 0 {
			return bad("--max-tokens %d leaves no room within %s %d for the prompt (this model needs at least one token): lower it to %d or less", f.maxTokens, what, limit, limit-minPrompt)
		}
		return bad("--max-tokens %d is more than %s %d (a request's prompt and max_tokens together): lower it to %d or less", f.maxTokens, what, limit, limit)
	}
	return nil
}

// minBody is the least --max-body: a short chat request with a few sampler
// fields (an 800-character message is about 1 KiB).
const minBody = 1 << 10

func runServe(cmd *cobra.Command, dir string, f *serveFlags) error {
	for _, c := range []struct {
		name string
		bad  bool
	}{{"--port", f.port < 0 || f.port > 65535}, {"--max-queue", f.maxQueue < 1}, {"--max-batch", f.maxBatch < 1},
		{"--max-tokens", f.maxTokens < 0}, {"--max-model-len", f.maxLen < 0}, {"--timeout", f.timeout < 0},
		{"--shutdown-timeout", f.grace < 0}} {
		if c.bad {
			return &exitError{2, fmt.Errorf("%s is out of range (see 'dllm serve --help')", c.name)}
		}
	}
	if f.maxBody < minBody {
		return &exitError{2, fmt.Errorf("--max-body %d is below %d bytes, too small for most requests (they would get 413): raise it (default %d)", f.maxBody, minBody, 1<<20)}
	}
	if err := f.checkLimits(0, false); err != nil {
		return err // the flags alone; the model's positions once it is opened
	}
	srv, be, err := openServer(cmd, dir, f)
	if err != nil {
		return err
	}
	defer be.Close()
	defer srv.Close()
	l, err := net.Listen("tcp", net.JoinHostPort(f.host, strconv.Itoa(f.port)))
	if err != nil {
		return fmt.Errorf("cannot listen on %s:%d: %v (pick another --port or --host)", f.host, f.port, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(cmd.ErrOrStderr(), "dllm serve: %s on http://%s (%s, queue %d, batch %d rows)\n",
		dir, l.Addr(), be.Name(), f.maxQueue, f.maxBatch)
	go func() {
		<-ctx.Done()
		stop() // a second signal ends the process at once
		fmt.Fprintf(cmd.ErrOrStderr(), "dllm serve: shutting down (requests in flight get %s to finish)\n", f.grace)
	}()
	if err := srv.Serve(ctx, l, f.grace); err != nil {
		return err
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "dllm serve: stopped")
	return nil
}
