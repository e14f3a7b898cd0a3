// Package serve is an OpenAI-compatible HTTP server for a diffusion model:
// /v1/completions, /v1/chat/completions, /v1/models and /health over one
// model, with a bounded request queue whose compatible requests are decoded
// together in one batch, each exactly as `dllm generate` would alone.
package serve

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

// Config sets a server's limits.
type Config struct {
	Name      string        // model id in the API (default: the folder's base name)
	APIKey    string        // when set, every /v1 request needs "Authorization: Bearer APIKey"
	MaxQueue  int           // requests waiting or running at once; more get 503 (default 64)
	MaxBatch  int           // rows decoded together in one forward (default 8; 1: no batching)
	MaxTokens int           // largest max_tokens a request may ask for (0: the model's positions)
	MaxLen    int           // largest prompt + max_tokens of a request (0: the model's positions)
	Timeout   time.Duration // per request, queueing included (0: none)
	MaxBody   int64         // request body bytes; more get 413 (default 1 MiB)
	Log       io.Writer     // one line per request (nil: none)
	// ChatTemplate is a Jinja file used instead of the model's
	// chat_template ("" : the model's, if it has one).
	ChatTemplate string
	// Fits, when set, refuses (400) a request whose decoding would not fit
	// the memory: rows of tokens (prompt and max_tokens), its n rows or,
	// batched with others of its length, MaxBatch.
	Fits func(rows, tokens int) error
	// FitLen is the longest prompt + max_tokens whose MaxBatch rows were
	// found to fit at start-up (0: none). Longer requests go to Fits; it
	// caps the default max_tokens.
	FitLen int
}

// Server serves one model.
type Server struct {
	cfg      Config
	m        *model.Model
	info     diffusion.Info
	tok      *tokenizer.Tokenizer
	chat     *tokenizer.ChatTemplate // nil: none
	defaults diffusion.GenOptions
	eos      []int32
	byteTok  []bool // <0xNN> byte-fallback tokens
	q        *queue
	log      *log.Logger
	created  int64
	stop     context.CancelFunc
	stopped  chan struct{}
	closing  atomic.Bool
}

// New opens the server for ck, opened by model.Open with its model
// loaded. It starts the decoding worker; Close stops it.
func New(ck *model.Checkpoint, cfg Config) (*Server, error) {
	m, tok, dir := ck.Model, ck.Tok, ck.Dir
	if m == nil || tok == nil {
		return nil, fmt.Errorf("serve: %s is opened without its model or tokenizer", dir)
	}
	info, err := diffusion.InfoFrom(m.Cfg)
	if err != nil {
		return nil, err
	}
	chat, err := tokenizer.LoadChatTemplate(ck.Find("tokenizer_config.json"), cfg.ChatTemplate)
	if err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		abs, _ := filepath.Abs(dir)
		cfg.Name = filepath.Base(abs)
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 64
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 8
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	s := &Server{cfg: cfg, m: m, info: info, tok: tok, chat: chat, defaults: diffusion.GenDefaults(ck.Find("generation_config.json")),
		eos: ck.EOS, created: time.Now().Unix(), stopped: make(chan struct{})}
	s.byteTok = make([]bool, m.Cfg.Vocab)
	for id := range s.byteTok {
		t := tok.Token(id)
		s.byteTok[id] = len(t) == 6 && strings.HasPrefix(t, "<0x") && t[5] == '>'
	}
	if cfg.Log != nil {
		s.log = log.New(cfg.Log, "", log.LstdFlags)
	}
	s.q = newQueue(m, info, cfg.MaxBatch, cfg.MaxQueue)
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() {
		s.q.run(ctx)
		close(s.stopped)
	}()
	return s, nil
}

// Close stops the decoding worker once its batch is done.
func (s *Server) Close() {
	s.stop()
	<-s.stopped
}

// Handler routes the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
				w.Header().Set("Allow", method)
				writeError(w, errorWith(http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "%s needs %s, not %s", path, method, r.Method))
				return
			}
			h(w, r)
		})
	}
	route(http.MethodGet, "/health", s.health)
	route(http.MethodGet, "/v1/models", s.auth(s.models))
	route(http.MethodGet, "/v1/models/{id}", s.auth(s.models))
	route(http.MethodPost, "/v1/completions", s.auth(func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, false) }))
	route(http.MethodPost, "/v1/chat/completions", s.auth(func(w http.ResponseWriter, r *http.Request) { s.complete(w, r, true) }))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorWith(http.StatusNotFound, "invalid_request_error", "not_found", "no route %s %s (see /v1/models, /v1/completions, /v1/chat/completions, /health)", r.Method, r.URL.Path))
	})
	return s.logged(mux)
}

// Serve answers on l until ctx ends, then stops accepting, lets the
// requests in flight finish for up to grace, cancels the rest and returns
// nil once they are gone.
func (s *Server) Serve(ctx context.Context, l net.Listener, grace time.Duration) error {
	base, cancelAll := context.WithCancel(context.Background())
	defer cancelAll()
	hs := &http.Server{Handler: s.Handler(), BaseContext: func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.closing.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		// Past the grace period: cancel what is left; its handlers end at
		// the sampler's next step.
		cancelAll()
		wait, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel2()
		err = hs.Shutdown(wait)
	}
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) {
		return e
	}
	return err
}

func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	if s.cfg.APIKey == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.APIKey)
	return func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, errorWith(http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
				"a valid API key is needed: send the header \"Authorization: Bearer KEY\""))
			return
		}
		h(w, r)
	}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	waiting, running := s.q.stats()
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "model": s.cfg.Name, "waiting": waiting, "running": running})
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	m := map[string]any{"id": s.cfg.Name, "object": "model", "created": s.created, "owned_by": "dllm"}
	if id := r.PathValue("id"); id != "" {
		if id != s.cfg.Name {
			writeError(w, errorWith(http.StatusNotFound, "invalid_request_error", "model_not_found", "the model %q does not exist (this server has %q)", id, s.cfg.Name))
			return
		}
		writeJSON(w, http.StatusOK, m)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []any{m}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.Status, map[string]any{"error": e})
}

// reqLog is what the request's log line says.
type reqLog struct {
	id                string
	promptTok, genTok int
	steps, forward    int
	batchRows         int
	queued            time.Duration
	note              string
}

type logKey struct{}

func logOf(r *http.Request) *reqLog {
	l, _ := r.Context().Value(logKey{}).(*reqLog)
	if l == nil {
		l = &reqLog{}
	}
	return l
}

// statusWriter records the status for the log line.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		l := &reqLog{id: newID()}
		w.Header().Set("X-Request-Id", l.id)
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), logKey{}, l)))
		if s.log == nil {
			return
		}
		status := sw.status
		line := fmt.Sprintf("%s %s %s %d %.3fs", l.id, r.Method, r.URL.Path, status, time.Since(t0).Seconds())
		if l.batchRows > 0 || l.promptTok > 0 {
			line += fmt.Sprintf(" prompt=%d tokens=%d steps=%d forward=%d batch=%d queued=%.3fs",
				l.promptTok, l.genTok, l.steps, l.forward, l.batchRows, l.queued.Seconds())
		}
		if l.note != "" {
			line += " (" + l.note + ")"
		}
		s.log.Print(line)
	})
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// complete answers /v1/completions (chat false) and /v1/chat/completions.
func (s *Server) complete(w http.ResponseWriter, r *http.Request, chat bool) {
	rl := logOf(r)
	req, aerr := decodeRequest(r, s.cfg.MaxBody)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if req.Model != "" && req.Model != s.cfg.Name {
		writeError(w, errorWith(http.StatusNotFound, "invalid_request_error", "model_not_found",
			"the model %q does not exist (this server has %q)", req.Model, s.cfg.Name))
		return
	}
	opt, n, seed, aerr := s.settings(req, chat)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	var ids []int32
	var p prompt
	if chat {
		ids, opt.EOS, aerr = s.chatPrompt(req.Messages, opt.EOS)
	} else {
		p, aerr = parsePrompt(req.Prompt)
		ids = p.ids
		if aerr == nil && !p.isID {
			for _, id := range s.tok.Encode(p.text, true) {
				ids = append(ids, int32(id))
			}
		}
	}
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	stops, aerr := parseStop(req.Stop)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	for _, id := range ids {
		if int(id) >= s.m.Cfg.Vocab {
			writeError(w, badRequest("prompt", "prompt token %d is outside the vocabulary (%d)", id, s.m.Cfg.Vocab))
			return
		}
	}
	if len(ids) == 0 && s.info.Shift {
		writeError(w, badRequest("prompt", "the prompt is empty: this model needs at least one token"))
		return
	}
	if req.maxTokens(chat) == nil {
		// The model's default, cut to what the prompt leaves of the
		// server's limits (OpenAI's chat API takes all the rest: a
		// diffusion model pays for every position it is given).
		for _, l := range []struct {
			n    int
			what string
		}{{s.m.Cfg.MaxPositions, "the model's %d positions"}, {s.cfg.MaxLen, "this server's limit of %d tokens"}, {s.cfg.FitLen, ""}} {
			room := l.n - len(ids)
			if l.n > 0 && room < 1 && l.what != "" {
				writeError(w, badRequest("prompt", "the prompt (%d tokens) leaves no room to generate within "+l.what+": shorten it", len(ids), l.n))
				return
			}
			if room > 0 && opt.GenLen > room {
				opt.GenLen = room
			}
		}
	}
	if mp := s.m.Cfg.MaxPositions; mp > 0 && len(ids)+opt.GenLen > mp {
		writeError(w, badRequest("max_tokens", "the prompt (%d tokens) plus max_tokens (%d) is over the model's %d positions", len(ids), opt.GenLen, mp))
		return
	}
	if ml := s.cfg.MaxLen; ml > 0 && len(ids)+opt.GenLen > ml {
		writeError(w, badRequest("max_tokens", "the prompt (%d tokens) plus max_tokens (%d) is over this server's limit of %d tokens", len(ids), opt.GenLen, ml))
		return
	}
	if s.cfg.Fits != nil {
		if err := s.cfg.Fits(max(n, s.cfg.MaxBatch), len(ids)+opt.GenLen); err != nil {
			writeError(w, errorWith(http.StatusBadRequest, "invalid_request_error", "not_enough_memory", "%v", err))
			return
		}
	}
	rl.promptTok = len(ids)

	ctx, cancel := context.WithCancel(r.Context())
	if s.cfg.Timeout > 0 {
		ctx, cancel = context.WithTimeout(r.Context(), s.cfg.Timeout)
	}
	defer cancel()
	j := &job{ctx: ctx, enq: time.Now(), key: keyOf(opt, len(ids)), opt: opt,
		group:  diffusion.Group{Prompt: ids, Rows: n, Seed: seed, Done: ctx.Done()},
		blocks: make(chan [][]int32, opt.GenLen+2), done: make(chan result, 1),
		partial: req.Partial && req.Stream, stepsNotify: make(chan struct{}, 1)}
	if err := s.q.submit(j); err != nil {
		writeError(w, errorWith(http.StatusServiceUnavailable, "server_error", "queue_full",
			"the server is busy (%d requests queued): retry later", s.cfg.MaxQueue))
		return
	}
	defer s.q.release(j)

	a := &answer{s: s, chat: chat, echo: req.Echo && !chat, n: n, prompt: ids, genLen: opt.GenLen, stops: stops,
		ids: req.ReturnTokenIDs, id: rl.id, created: time.Now().Unix()}
	a.rows = make([]rowText, n)
	pre := s.decode(ids)
	for i := range a.rows {
		a.rows[i].pre = pre
	}
	if req.Stream {
		a.stream = &sse{w: w, rc: http.NewResponseController(w)}
		a.usage = req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		a.start()
	}
	res, stoppedEarly := a.wait(j, cancel)
	rl.steps, rl.forward, rl.batchRows, rl.queued = res.steps, res.forward, res.batchRows, res.queued
	if res.err != nil && !stoppedEarly {
		var e *apiError
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil:
			rl.note = "timeout"
			e = errorWith(http.StatusGatewayTimeout, "timeout", "timeout", "the request took longer than the server's limit of %s", s.cfg.Timeout)
		case r.Context().Err() != nil && !s.closing.Load():
			rl.note = "client gone"
			return
		case r.Context().Err() != nil:
			rl.note = "cancelled by shutdown"
			e = errorWith(http.StatusServiceUnavailable, "server_error", "shutting_down", "the server is shutting down: retry on another instance")
		default:
			e = errorWith(http.StatusInternalServerError, "server_error", "", "%v", res.err)
		}
		if a.stream != nil {
			a.stream.send(map[string]any{"error": e})
			a.stream.done()
		} else {
			writeError(w, e)
		}
		return
	}
	a.finish(res.tokens)
	for _, t := range res.tokens {
		rl.genTok += len(t)
	}
	if a.stream != nil {
		a.stream.done()
		return
	}
	writeJSON(w, http.StatusOK, a.response(res))
}

// decode is the text of ids (special tokens skipped).
func (s *Server) decode(ids []int32) string {
	xs := make([]int, len(ids))
	for i, v := range ids {
		xs[i] = int(v)
	}
	return s.tok.Decode(xs, true)
}

// genText is the text the tokens gen add to prompt: decoded together and
// cut after the prompt's own text (a SentencePiece decoder drops the
// leading space of the first token of a call), as `dllm generate` prints
// it.
func (s *Server) genText(prompt, gen []int32, pre string) string {
	full := s.decode(append(append(make([]int32, 0, len(prompt)+len(gen)), prompt...), gen...))
	if strings.HasPrefix(full, pre) {
		return full[len(pre):]
	}
	return s.decode(gen)
}

// chatText is an assistant's answer as `dllm generate --chat` prints it:
// the tokens decoded alone, cut at the template's end of turn (spelled in
// several tokens), without leading space and, once final, trailing space.
func (s *Server) chatText(gen []int32, final bool) string {
	text := s.decode(gen)
	if s.chat != nil && s.chat.EndOfTurn() != "" {
		text, _, _ = strings.Cut(text, s.chat.EndOfTurn())
	}
	text = strings.TrimLeftFunc(text, unicode.IsSpace)
	if final {
		text = strings.TrimRightFunc(text, unicode.IsSpace)
	}
	return text
}
