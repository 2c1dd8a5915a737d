package fakeupstream

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmq/llmq/jobs"
)

// DefaultCompletion is the completion tokens charged per choice when a
// request sets neither max_tokens nor max_completion_tokens and
// Config.DefaultCompletion is 0.
const DefaultCompletion = 256

// Config configures a Server. The zero value is a server without limits,
// latency or faults that accepts any API key.
type Config struct {
	// APIKey, when set, is the only key accepted; another key is answered
	// 401 invalid_api_key. Empty accepts any non-empty key.
	APIKey string
	// RPM and TPM are the requests and tokens per minute allowed (0:
	// unlimited). Each is a token bucket refilled continuously, charged at
	// request time: one request, and the prompt estimate plus the
	// completion limit (max_completion_tokens, else max_tokens, else
	// DefaultCompletion) times n. Rejected requests are not charged.
	RPM, TPM int64
	// BurstRequests and BurstTokens are the bucket capacities (0: one
	// minute's limit, or Quantum's).
	BurstRequests, BurstTokens int64
	// Quantum, when set, quantises the limits like a provider enforcing a
	// per-minute limit per second: each bucket holds Quantum of its rate
	// (1s: 60,000 RPM becomes 1,000 requests a second). Explicit bursts
	// win.
	Quantum time.Duration
	// Accounting is how a request's tokens are charged to TPM
	// (AccountTokenizer, the default, or AccountChars); usage is always
	// the tokenizer's.
	Accounting Accounting
	// DefaultCompletion is the completion tokens charged per choice when a
	// request sets no limit (0: 256).
	DefaultCompletion int
	// ContextWindow is the model's context length in tokens: a prompt
	// longer than it is answered 400 context_length_exceeded, as OpenAI
	// does. 0 means DefaultContextWindow.
	ContextWindow int
	// Latency is added before answering each request; a client that goes
	// away meanwhile gets nothing.
	Latency time.Duration
	// Faults is the default fault SPEC applied to every request (see
	// ParseFaults; "" = none).
	Faults string
	// Now is the clock of the limiter and the stats (nil: time.Now).
	// Latency and slow answers use real time.
	Now func() time.Time
	// Seed seeds the random fault mode.
	Seed int64
	// GenerationTime is how long every answer takes to generate (0: none).
	// A streamed answer sends its headers and role at once and its
	// fragments spread over it; a plain answer sends its headers only when
	// it is over, as OpenAI does. The fault generate:D overrides it.
	GenerationTime time.Duration
	// ThinkTime is how long every answer's model reasons before its first
	// token (0: none). A streamed answer sends its headers at once and then
	// nothing at all, not even the role, until the thinking is over, as
	// OpenAI's Chat Completions does for reasoning models; a plain answer's
	// headers wait for it as well as for the generation. The fault think:D
	// overrides it.
	ThinkTime time.Duration
	// TokensPerSecond, when GenerationTime is 0, makes an answer take its
	// completion tokens (of one choice) at this rate (0: instant).
	TokensPerSecond float64
	// StableIDs makes a completion's id a hash of the request body without
	// its stream fields, so the same request answered streaming and not
	// has the same id (for tests comparing the two); by default ids count
	// up.
	StableIDs bool
}

// Server is a fake OpenAI chat-completions upstream. Its methods are safe
// for concurrent use.
type Server struct {
	cfg     Config
	now     func() time.Time
	est     *jobs.Estimator
	handler http.Handler

	closeOnce sync.Once
	closed    chan struct{}
	ids       atomic.Uint64

	lim    *limiter
	faults *faultState
	stats  *statsState
}

// New returns a Server for cfg. The error names the bad field, e.g.
// `faults: unknown fault "foo" ...`.
func New(cfg Config) (*Server, error) {
	for _, f := range []struct {
		name string
		v    int64
	}{{"rpm", cfg.RPM}, {"tpm", cfg.TPM}, {"burst_requests", cfg.BurstRequests}, {"burst_tokens", cfg.BurstTokens}} {
		if f.v < 0 {
			return nil, fmt.Errorf("%s: must be 0 (unlimited) or more, got %d", f.name, f.v)
		}
	}
	if cfg.DefaultCompletion < 0 {
		return nil, fmt.Errorf("default_completion: must be 0 (default %d) or more, got %d", DefaultCompletion, cfg.DefaultCompletion)
	}
	if cfg.DefaultCompletion == 0 {
		cfg.DefaultCompletion = DefaultCompletion
	}
	if cfg.ContextWindow < 0 {
		return nil, fmt.Errorf("context_window: must be 0 (default %d) or more, got %d", DefaultContextWindow, cfg.ContextWindow)
	}
	if cfg.ContextWindow == 0 {
		cfg.ContextWindow = DefaultContextWindow
	}
	if cfg.Quantum < 0 || cfg.Quantum > time.Minute {
		return nil, fmt.Errorf("quantum: must be from 0 to 1m, got %s", cfg.Quantum)
	}
	switch cfg.Accounting {
	case "", AccountTokenizer, AccountChars:
	default:
		return nil, fmt.Errorf("accounting: must be %q or %q, got %q", AccountTokenizer, AccountChars, cfg.Accounting)
	}
	if cfg.Latency < 0 {
		return nil, fmt.Errorf("latency: must be 0 or more, got %s", cfg.Latency)
	}
	if cfg.GenerationTime < 0 || cfg.TokensPerSecond < 0 || cfg.ThinkTime < 0 {
		return nil, fmt.Errorf("generation: time, think time and tokens per second must be 0 or more, got %s, %s and %g", cfg.GenerationTime, cfg.ThinkTime, cfg.TokensPerSecond)
	}
	plan, err := ParseFaults(cfg.Faults)
	if err != nil {
		return nil, fmt.Errorf("faults: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:    cfg,
		now:    cfg.Now,
		est:    jobs.NewEstimator(cfg.DefaultCompletion, jobs.WithMethod(jobs.MethodTokenizer)),
		closed: make(chan struct{}),
		lim:    newLimiter(cfg, cfg.Now()),
		faults: newFaultState(cfg.Seed, plan),
		stats:  newStatsState(),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { s.serveChat(w, r, "") })
	mux.HandleFunc("POST /chat/completions", func(w http.ResponseWriter, r *http.Request) { s.serveChat(w, r, "") })
	mux.HandleFunc("POST /openai/deployments/{deployment}/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		s.serveChat(w, r, r.PathValue("deployment"))
	})
	mux.HandleFunc("GET /_fake/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Stats()) })
	mux.HandleFunc("POST /_fake/reset", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_fake/faults", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.faults.view()) })
	mux.HandleFunc("POST /_fake/faults", s.serveSetFaults)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		send(w, openAIError(http.StatusNotFound, fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path), "invalid_request_error", "", ""))
	})
	s.handler = mux
	return s, nil
}

// Handler returns the HTTP handler serving the API and the control
// endpoints.
func (s *Server) Handler() http.Handler { return s.handler }

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// Reset zeroes the counters, refills the RPM/TPM buckets, restarts every
// fault sequence and forgets per-header cursors. Configured fault plans
// stay.
func (s *Server) Reset() {
	s.stats.reset()
	s.lim.reset(s.now())
	s.faults.rewind()
}

// SetFaults replaces the default fault SPEC (see ParseFaults); its sequence
// starts at its first element. "" removes it.
func (s *Server) SetFaults(spec string) error {
	plan, err := ParseFaults(spec)
	if err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	s.faults.setDefault(plan)
	return nil
}

// SetModelFaults sets a fault SPEC for requests naming model; it takes
// precedence over the default. "" removes it.
func (s *Server) SetModelFaults(model, spec string) error {
	plan, err := ParseFaults(spec)
	if err != nil {
		return fmt.Errorf("faults for model %q: %w", model, err)
	}
	s.faults.setModel(model, plan)
	return nil
}

// Close releases requests held by a hang fault (their connections are
// closed without an answer). Call it before http.Server.Shutdown, which
// would otherwise wait for them. The Server keeps serving otherwise.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
}

// StatusRecorder wraps an http.ResponseWriter and remembers the status it
// answered (200 when the body was written without WriteHeader). Unwrap
// keeps Hijack and Flush reachable through http.ResponseController. The
// fake uses it for its counters; tests and drills that wrap the fake's
// handler use it to see what each request was answered.
type StatusRecorder struct {
	http.ResponseWriter
	Status int
}

// WriteHeader records code and passes it on.
func (r *StatusRecorder) WriteHeader(code int) {
	if r.Status == 0 {
		r.Status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records an implicit 200 and passes b on.
func (r *StatusRecorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap returns the wrapped ResponseWriter.
func (r *StatusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// serveChat answers a chat-completions request. deployment is set on the
// Azure route. Order: auth, body validation, fault choice, then either the
// error fault (not charged) or the limiter and the answer.
func (s *Server) serveChat(w http.ResponseWriter, r *http.Request, deployment string) {
	ctx := r.Context()
	arrived := s.now()
	fakeKey := r.Header.Get("X-Fake-Key")
	rec := &StatusRecorder{ResponseWriter: w}
	s.stats.begin(arrived, fakeKey)
	defer func() { s.stats.end(rec.Status) }()

	n := s.ids.Add(1)
	h := w.Header()
	h.Set("x-request-id", fmt.Sprintf("req_%032x", n))
	h.Set("openai-organization", org)
	h.Set("openai-version", "2020-10-01")
	azure := deployment != ""

	// answer sends rep after the configured latency plus extra, with the
	// rate-limit headers of st.
	answer := func(rep reply, st limitState, extra time.Duration) {
		if !sleep(ctx, s.cfg.Latency+extra) {
			return
		}
		st.setHeaders(h)
		h.Set("openai-processing-ms", strconv.FormatInt(s.now().Sub(arrived).Milliseconds(), 10))
		send(rec, rep)
	}

	if rep := s.auth(r, azure); rep != nil {
		answer(*rep, s.lim.peek(arrived), 0)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, jobs.MaxBodyBytes+1))
	if err != nil {
		return // the client went away mid-body: nobody to answer
	}
	if len(body) > jobs.MaxBodyBytes {
		answer(s.statusReply(http.StatusRequestEntityTooLarge, ""), s.lim.peek(arrived), 0)
		return
	}
	req, opts, bad := decodeRequest(body, deployment)
	if bad != nil {
		answer(*bad, s.lim.peek(arrived), 0)
		return
	}
	s.stats.update(func(st *Stats) { st.ByModel[req.Model]++ })

	fault, extra, err := s.faults.pick(r.Header.Get("X-Fake-Faults"), fakeKey, req.Model)
	if err != nil {
		answer(invalidRequest(err.Error(), "", ""), s.lim.peek(arrived), 0)
		return
	}
	s.stats.update(func(st *Stats) {
		if name := fault.name(); name != "" {
			st.ByFault[name]++
		}
		if extra > 0 && fault.Kind != FaultLatency {
			st.ByFault[string(FaultLatency)]++
		}
	})

	cost := s.est.Estimate(req)
	switch {
	case fault.Kind == FaultHang:
		select {
		case <-ctx.Done():
		case <-s.closed:
			hijackClose(rec, false)
		}
		return
	case fault.Kind == FaultReset:
		if sleep(ctx, s.cfg.Latency+extra) {
			hijackClose(rec, true)
		}
		return
	case fault.isError():
		answer(s.faultReply(fault, req, cost.PromptTokens), s.lim.peek(arrived), extra)
		return
	}

	if cost.PromptTokens > s.cfg.ContextWindow {
		answer(contextTooLong(s.cfg.ContextWindow, cost.PromptTokens), s.lim.peek(arrived), extra)
		return
	}
	v := s.lim.take(arrived, s.charge(req, cost))
	if !v.ok {
		s.stats.update(func(st *Stats) { st.Throttled++ })
		switch {
		case v.tooLarge:
			answer(tooLarge(req.Model, v), v.state, extra)
		case azure:
			answer(azureRateLimited(v), v.state, extra)
		default:
			answer(rateLimited(req.Model, v), v.state, extra)
		}
		return
	}

	id := fmt.Sprintf("chatcmpl-fake%019d", n)
	if s.cfg.StableIDs {
		id = stableID(body)
	}
	ans := s.buildAnswer(req, opts, fault, id, arrived.Unix(), cost.PromptTokens)
	gen, think := s.generationTime(fault, ans.tokens), s.thinkTime(fault)
	rep := reply{status: http.StatusOK, contentType: "application/json", body: ans.body()}.with("openai-model", req.Model)

	if opts.Stream && fault.Kind != FaultMalformed && fault.Kind != FaultTruncated && fault.Kind != FaultSlow && fault.Kind != FaultEchoKey {
		if !sleep(ctx, s.cfg.Latency+extra) {
			return
		}
		v.state.setHeaders(h)
		h.Set("openai-model", req.Model)
		h.Set("openai-processing-ms", strconv.FormatInt(s.now().Sub(arrived).Milliseconds(), 10))
		if s.writeStream(ctx, rec, ans, opts, fault, think, gen) {
			s.served(ans.comp.Usage)
		}
		return
	}
	gen += think // a plain answer's headers wait for the thinking too

	switch fault.Kind {
	case FaultEchoKey:
		answer(echoKey(rep, requestKey(r)), v.state, extra)
		if rec.Status == http.StatusOK {
			s.served(ans.comp.Usage)
		}
	case FaultMalformed:
		rep.body = []byte(`{"id":"chatcmpl-x","choices":[`)
		answer(rep, v.state, extra)
	case FaultTruncated, FaultCut:
		if !sleep(ctx, s.cfg.Latency+extra+gen) {
			return
		}
		v.state.setHeaders(h)
		writeHead(rec, rep)
		_, _ = rec.Write(rep.body[:len(rep.body)/2])
		_ = http.NewResponseController(rec).Flush()
		hijackClose(rec, false)
	case FaultStall:
		if !sleep(ctx, s.cfg.Latency+extra+gen) {
			return
		}
		v.state.setHeaders(h)
		s.writeStalled(ctx, rec, rep)
	case FaultStreamError:
		st := fault.Status
		if st == 0 {
			st = http.StatusInternalServerError
		}
		answer(s.statusReply(st, req.Model), v.state, extra+gen)
	case FaultSlow:
		if !sleep(ctx, s.cfg.Latency+extra) {
			return
		}
		v.state.setHeaders(h)
		if s.writeSlowly(ctx, rec, rep, s.slowDuration(fault)) {
			s.served(ans.comp.Usage)
		}
	default:
		// Like OpenAI, a plain answer's headers leave only once the whole
		// answer is generated.
		answer(rep, v.state, extra+gen)
		if rec.Status == http.StatusOK {
			s.served(ans.comp.Usage)
		}
	}
}

func (s *Server) served(u usage) {
	s.stats.update(func(st *Stats) {
		st.PromptTokens += int64(u.PromptTokens)
		st.CompletionTokens += int64(u.CompletionTokens)
	})
}

// slowDuration is how long a slow answer takes to write its body.
func (s *Server) slowDuration(f Fault) time.Duration {
	switch {
	case f.Delay > 0:
		return f.Delay
	case s.cfg.Latency > 0:
		return 4 * s.cfg.Latency
	}
	return 2 * time.Second
}

// writeSlowly writes rep's body in ten chunks spread over d. It reports
// whether the whole body was written.
func (s *Server) writeSlowly(ctx context.Context, w http.ResponseWriter, rep reply, d time.Duration) bool {
	writeHead(w, rep)
	rc := http.NewResponseController(w)
	const chunks = 10
	size := (len(rep.body) + chunks - 1) / chunks
	for i := 0; i < len(rep.body); i += size {
		if i > 0 && !sleep(ctx, d/chunks) {
			return false
		}
		if _, err := w.Write(rep.body[i:min(i+size, len(rep.body))]); err != nil {
			return false
		}
		if err := rc.Flush(); err != nil {
			return false
		}
	}
	return true
}

// requestKey is the request's API key: Authorization: Bearer, or Azure's
// api-key.
func requestKey(r *http.Request) string {
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "Bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return strings.TrimSpace(r.Header.Get("api-key"))
}

// auth checks the API key.
func (s *Server) auth(r *http.Request, azure bool) *reply {
	key := requestKey(r)
	var rep reply
	switch {
	case key == "" && azure, s.cfg.APIKey != "" && key != s.cfg.APIKey && azure:
		rep = azureAuthFailed()
	case key == "":
		rep = missingKey()
	case s.cfg.APIKey != "" && key != s.cfg.APIKey:
		rep = invalidKey(key)
	default:
		return nil
	}
	return &rep
}

// decodeRequest validates body like OpenAI does and decodes it. On the
// Azure route the deployment names the model when the body does not.
func decodeRequest(body []byte, deployment string) (*jobs.Request, wireOptions, *reply) {
	var opts wireOptions
	req, bad := decodeJob(body, deployment, &opts)
	return req, opts, bad
}

// decodeJob is decodeRequest; it fills opts from the stream, tools and
// logprobs fields.
func decodeJob(body []byte, deployment string, opts *wireOptions) (*jobs.Request, *reply) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		rep := invalidRequest(unparsableMessage, "", "")
		return nil, &rep
	}
	if rep := streamOptions(top, opts); rep != nil {
		return nil, rep
	}
	if _, ok := top["stream"]; ok {
		// llmq's job validation refuses stream; the API accepts it.
		delete(top, "stream")
		delete(top, "stream_options")
		body, _ = json.Marshal(top)
	}
	if deployment != "" {
		var model string
		if json.Unmarshal(top["model"], &model) != nil || model == "" {
			b, err := jobs.WithModel(body, deployment)
			if err != nil {
				rep := invalidRequest(unparsableMessage, "", "")
				return nil, &rep
			}
			body = b
			top["model"], _ = json.Marshal(deployment)
		}
	}
	if v, ok := top["model"]; !ok || string(v) == "null" {
		rep := invalidRequest("you must provide a model parameter", "model", "missing_required_parameter")
		return nil, &rep
	}
	if v, ok := top["messages"]; !ok || string(v) == "null" {
		rep := invalidRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
		return nil, &rep
	}
	if err := (&jobs.Job{ID: "fake", Body: body}).Validate(); err != nil {
		var ve *jobs.ValidationError
		if errors.As(err, &ve) && len(ve.Problems) > 0 {
			p := ve.Problems[0]
			rep := invalidRequest(fmt.Sprintf("Invalid value for '%s': %s.", p.Path, p.Message), p.Path, "invalid_value")
			return nil, &rep
		}
		rep := invalidRequest(err.Error(), "", "")
		return nil, &rep
	}
	var req jobs.Request
	if err := json.Unmarshal(body, &req); err != nil {
		rep := invalidRequest(unparsableMessage, "", "")
		return nil, &rep
	}
	var extra struct {
		Tools      json.RawMessage `json:"tools"`
		ToolChoice json.RawMessage `json:"tool_choice"`
		Logprobs   *bool           `json:"logprobs"`
	}
	_ = json.Unmarshal(body, &extra)
	_ = json.Unmarshal(extra.Tools, &opts.Tools)
	opts.ToolChoice = extra.ToolChoice
	opts.Logprobs = extra.Logprobs != nil && *extra.Logprobs
	return &req, nil
}

// streamOptions reads stream and stream_options, answering OpenAI's 400s
// for bad values.
func streamOptions(top map[string]json.RawMessage, opts *wireOptions) *reply {
	if raw, ok := top["stream"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &opts.Stream); err != nil {
			rep := invalidRequest("Invalid type for 'stream': expected a boolean, but got "+string(raw)+" instead.", "stream", "invalid_type")
			return &rep
		}
	}
	if raw, ok := top["stream_options"]; ok && string(raw) != "null" {
		if !opts.Stream {
			rep := invalidRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options", "invalid_value")
			return &rep
		}
		var so struct {
			IncludeUsage *bool `json:"include_usage"`
		}
		if err := json.Unmarshal(raw, &so); err != nil {
			rep := invalidRequest("Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
			return &rep
		}
		opts.IncludeUsage = so.IncludeUsage != nil && *so.IncludeUsage
	}
	return nil
}

// serveSetFaults handles POST /_fake/faults[?model=M] with the SPEC as body.
func (s *Server) serveSetFaults(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		send(w, invalidRequest("read fault spec: "+err.Error(), "", ""))
		return
	}
	spec := strings.TrimSpace(string(b))
	if model := r.URL.Query().Get("model"); model != "" {
		err = s.SetModelFaults(model, spec)
	} else {
		err = s.SetFaults(spec)
	}
	if err != nil {
		send(w, invalidRequest(err.Error(), "", ""))
		return
	}
	writeJSON(w, http.StatusOK, s.faults.view())
}

// writeHead writes rep's headers and status.
func writeHead(w http.ResponseWriter, rep reply) {
	h := w.Header()
	for _, kv := range rep.header {
		h.Set(kv[0], kv[1])
	}
	h.Set("Content-Type", rep.contentType)
	h.Set("Content-Length", strconv.Itoa(len(rep.body)))
	w.WriteHeader(rep.status)
}

// send writes rep.
func send(w http.ResponseWriter, rep reply) {
	writeHead(w, rep)
	_, _ = w.Write(rep.body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		send(w, openAIError(http.StatusInternalServerError, "encode: "+err.Error(), "server_error", "", ""))
		return
	}
	send(w, reply{status: status, contentType: "application/json", body: b})
}

// sleep waits d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// hijackClose takes the connection from net/http and closes it, with a TCP
// RST (SO_LINGER 0) when rst is set, after flushing anything written. Where
// the connection cannot be hijacked (HTTP/2) the stream is aborted.
func hijackClose(w http.ResponseWriter, rst bool) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if !rst && buf != nil {
		_ = buf.Flush()
	}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok && rst {
		raw = tc.NetConn()
	}
	if tcp, ok := raw.(*net.TCPConn); ok && rst {
		_ = tcp.SetLinger(0)
	}
	_ = raw.Close()
}
