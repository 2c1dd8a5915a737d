package upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/llmq/llmq/jobs"
)

// Defaults applied to zero Config fields.
const (
	DefaultBaseURL               = "https://api.openai.com/v1"
	DefaultConnectTimeout        = 5 * time.Second
	DefaultResponseHeaderTimeout = 15 * time.Second
	DefaultMaxIdleConnsPerHost   = 64
	DefaultAzureAPIVersion       = "2024-10-21"
)

// maxResponseBody bounds a 2xx body; a larger one is KindMalformed.
const maxResponseBody = 32 << 20

// maxErrorRead bounds how much of a non-2xx body is read and parsed.
const maxErrorRead = 64 << 10

// Config configures a Client. Zero fields take the documented defaults;
// only Key is required.
type Config struct {
	// BaseURL is the API root; the client POSTs BaseURL + "/chat/completions".
	// Default DefaultBaseURL.
	BaseURL string
	// Key provides the API key. Required.
	Key KeySource
	// ConnectTimeout bounds the TCP connect and the TLS handshake. Default 5s.
	ConnectTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for response headers once the
	// request is written, for calls that do not stream. Default 15s. OpenAI
	// sends a non-streaming completion's headers only once the whole answer
	// is generated. The whole call, body included, is bounded by the
	// context passed to Chat (call_timeout and the job's deadline).
	ResponseHeaderTimeout time.Duration
	// FirstByteTimeout bounds, for a streamed call, the wait for the
	// response headers. Default DefaultFirstByteTimeout (15s).
	FirstByteTimeout time.Duration
	// FirstEventTimeout bounds, for a streamed call, the wait from the
	// headers to the first event (a reasoning model writes nothing while it
	// thinks). Default DefaultFirstEventTimeout (10m).
	FirstEventTimeout time.Duration
	// IdleTimeout bounds the silence between two events of a stream.
	// Default DefaultIdleTimeout (15s).
	IdleTimeout time.Duration
	// DisableStream makes every call non-streaming, for providers that do
	// not stream. By default calls stream (see [Client.Chat]).
	DisableStream bool
	// NoStreamModels lists models (as the body names them) called without
	// streaming.
	NoStreamModels []string
	// Azure, when non-nil, switches to Azure OpenAI: the URL is
	// BaseURL/openai/deployments/<model>/chat/completions?api-version=...
	// (the deployment is the body's model) and the key goes in the api-key
	// header instead of Authorization: Bearer.
	Azure *Azure
	// MaxIdleConnsPerHost is the keep-alive pool size. Default 64.
	MaxIdleConnsPerHost int
	// UserAgent, when set, is sent as User-Agent.
	UserAgent string
	// Now is the clock used for Retry-After dates and latency. Default
	// time.Now.
	Now func() time.Time
}

// Azure configures Azure OpenAI.
type Azure struct {
	// APIVersion is the api-version query parameter. Default
	// DefaultAzureAPIVersion.
	APIVersion string
}

// Client calls an OpenAI-compatible chat-completions endpoint. It is safe
// for concurrent use. It never retries a request the server may have seen:
// asynq owns retries. (net/http may transparently resend a request on a
// fresh connection when a kept-alive one turned out dead before a single
// byte of the request was written; the server cannot have seen it.)
type Client struct {
	endpoint  string // non-Azure: full URL; Azure: BaseURL
	azure     *Azure
	key       KeySource
	userAgent string
	now       func() time.Time
	http      *http.Client
	transport *http.Transport

	headerTimeout     time.Duration
	firstByteTimeout  time.Duration
	firstEventTimeout time.Duration
	idleTimeout       time.Duration
	stream            bool
	noStream          map[string]bool
	est               *jobs.Estimator
	readers           *sync.Pool // *bufio.Reader of streamBufSize, for readStream (shared by copies)
}

// New returns a Client for cfg, or an error naming the bad field.
func New(cfg Config) (*Client, error) {
	if cfg.Key == nil {
		return nil, errors.New("upstream: Config.Key is required: pass StaticKey(key) or FileKey(path)")
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultBaseURL
	}
	base := strings.TrimRight(cfg.BaseURL, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		return nil, fmt.Errorf("upstream: Config.BaseURL %q must be an http(s) URL without a query, such as %s", cfg.BaseURL, DefaultBaseURL)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if cfg.FirstByteTimeout <= 0 {
		cfg.FirstByteTimeout = DefaultFirstByteTimeout
	}
	if cfg.FirstEventTimeout <= 0 {
		cfg.FirstEventTimeout = DefaultFirstEventTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxIdleConnsPerHost <= 0 {
		cfg.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Client{endpoint: base + "/chat/completions", key: cfg.Key, userAgent: cfg.UserAgent, now: cfg.Now,
		headerTimeout: cfg.ResponseHeaderTimeout, firstByteTimeout: cfg.FirstByteTimeout, idleTimeout: cfg.IdleTimeout,
		firstEventTimeout: cfg.FirstEventTimeout,
		stream:            !cfg.DisableStream, noStream: map[string]bool{}, est: jobs.NewEstimator(0)}
	for _, m := range cfg.NoStreamModels {
		c.noStream[m] = true
	}
	c.readers = &sync.Pool{New: func() any { return bufio.NewReaderSize(nil, streamBufSize) }}
	if cfg.Azure != nil {
		az := *cfg.Azure
		if az.APIVersion == "" {
			az.APIVersion = DefaultAzureAPIVersion
		}
		c.azure, c.endpoint = &az, base
	}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	// HTTP/1.1 only: one connection per in-flight call, a pool of
	// MaxIdleConnsPerHost, and failures the classifier can tell apart (the
	// HTTP/2 stream errors are unexported).
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	c.transport = &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSHandshakeTimeout: cfg.ConnectTimeout,
		// The response-header, first-byte and idle timeouts are the
		// call's watchdog (stream.go): they differ between streamed and
		// plain calls, and a stall must be told from a header timeout.
		MaxIdleConns:        cfg.MaxIdleConnsPerHost,
		MaxIdleConnsPerHost: cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		Protocols:           &protocols,
	}
	c.http = &http.Client{
		Transport: c.transport,
		// A redirect would turn the POST into a GET; report it instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// String describes the client without its key.
func (c *Client) String() string {
	return fmt.Sprintf("upstream.Client(%s, key %v)", c.endpoint, c.key)
}

// GoString describes the client without its key.
func (c *Client) GoString() string { return c.String() }

// Format describes the client without its key, for every verb.
func (c *Client) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

// KeyFingerprint returns the current key's fingerprint; see
// [KeySource.Fingerprint].
func (c *Client) KeyFingerprint() string { return c.key.Fingerprint() }

// CloseIdleConnections closes kept-alive connections; call it on shutdown.
func (c *Client) CloseIdleConnections() { c.transport.CloseIdleConnections() }

// Response is a successful (2xx) chat completion.
type Response struct {
	// StatusCode is the HTTP status (2xx).
	StatusCode int
	// Body is the JSON body, checked to be a chat.completion object whose
	// every choice has an answer; the API key is scrubbed from it (see
	// [Redacted]) and invalid UTF-8 replaced by U+FFFD.
	Body []byte
	// RequestID is the server's request id (x-request-id), without the key.
	RequestID string
	// Model is the model that served the request, as the body names it.
	Model string
	// Usage is the body's token usage, read leniently (5.0 and "5" are 5);
	// zero when the server reported none or UsageErr is set.
	Usage jobs.Usage
	// UsageErr says why a usage the body carries could not be read; the
	// answer is still good, and the caller keeps its own estimate.
	UsageErr error
	// RateLimit holds the x-ratelimit-* headers.
	RateLimit RateLimit
	// KeyFingerprint is the [Fingerprint] of the key the call used.
	KeyFingerprint string
	// Streamed reports that the answer was streamed and assembled.
	Streamed bool
}

// Chat POSTs body, an OpenAI chat-completions request, and returns the
// completion. It makes exactly one attempt, bounded by ctx (call_timeout and
// the job's deadline) and the connect timeout.
//
// By default the call streams: the client adds "stream": true and
// "stream_options": {"include_usage": true} to the body on the wire, waits
// at most FirstByteTimeout for the headers, FirstEventTimeout for the first
// event and IdleTimeout between events, and assembles the chunks into the
// chat.completion the same request returns without streaming (see
// assembler), so a long answer that keeps streaming is paid once. A stream
// without usage gets an estimate marked [jobs.Usage.Estimated]. A server
// that answers a streamed request with a plain JSON body is read as such.
// Calls for NoStreamModels, or all with DisableStream, do not stream and wait
// at most ResponseHeaderTimeout for the headers.
//
// A non-2xx answer, or an error event inside a stream, is an [*Error] (an
// event is given the status it names); a call without a usable answer is a
// [*TransportError] (a stream that ends before [DONE] is KindStreamCut, one
// that goes silent KindStreamStall); a key that cannot be read wraps
// [ErrKey]; a body that cannot be sent wraps [ErrInvalidRequest]. None of
// them contains the key.
func (c *Client) Chat(ctx context.Context, body []byte) (*Response, error) {
	key, err := c.key.Key()
	if err != nil {
		return nil, fmt.Errorf("upstream chat: %w", err)
	}
	target := c.endpoint
	stream := c.stream
	if c.azure != nil || len(c.noStream) > 0 {
		var m struct {
			Model string `json:"model"`
		}
		jerr := json.Unmarshal(body, &m)
		if c.azure != nil {
			if jerr != nil || m.Model == "" {
				return nil, fmt.Errorf("%w: Azure needs the body's model field to name the deployment; set \"model\" to the deployment name", ErrInvalidRequest)
			}
			target += "/openai/deployments/" + url.PathEscape(m.Model) + "/chat/completions?api-version=" + url.QueryEscape(c.azure.APIVersion)
		}
		stream = stream && !c.noStream[m.Model]
	}
	wire := body
	if stream {
		if wire, err = streamBody(body); err != nil {
			return nil, err
		}
	}

	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	wd := newWatchdog(cancel)
	defer wd.stop()
	var tr callTrace
	ctx = httptrace.WithClientTrace(ctx, tr.clientTrace())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(wire))
	if err != nil {
		return nil, fmt.Errorf("%w: build request: %w", ErrInvalidRequest, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if stream {
		req.Header.Set("Accept", "text/event-stream")
	} else {
		req.Header.Set("Accept", "application/json")
	}
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	if c.azure != nil {
		req.Header.Set("api-key", key)
	} else {
		req.Header.Set("Authorization", "Bearer "+key)
	}

	if stream {
		wd.arm(c.firstByteTimeout, KindHeaderTimeout, "response headers")
	} else {
		wd.arm(c.headerTimeout, KindHeaderTimeout, "response headers")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.callError(parent, ctx, &tr, false, false, err)
	}
	defer resp.Body.Close()

	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	if ok && stream && isEventStream(resp.Header) {
		wd.arm(c.firstEventTimeout, KindStreamStall, "first stream event")
		sr, err := c.readStream(resp.Body, wd)
		if err != nil {
			var ev *errorEvent
			if errors.As(err, &ev) {
				// Classified like the status it names, scrubbed like any
				// error answer.
				named := *resp
				named.StatusCode = ev.status
				return nil, c.apiError(&named, ev.data, key)
			}
			var te *TransportError
			if errors.As(err, &te) {
				return nil, te
			}
			return nil, c.callError(parent, ctx, &tr, true, true, err)
		}
		wd.stop()
		out, err := completionResponse(resp.StatusCode, resp.Header, sr.body, key)
		if err != nil {
			return nil, err
		}
		if !sr.usage {
			out.Usage, out.UsageErr = estimateUsage(c.est, body, sr.asm.generatedChars()), nil
		}
		out.Streamed = true
		out.KeyFingerprint = Fingerprint(key)
		return out, nil
	}
	// A plain body (or an error answer): the whole call bounds its read.
	wd.stop()
	limit := int64(maxErrorRead)
	if ok {
		limit = maxResponseBody
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if !ok {
		// An error answer is classified by its status; a body cut short
		// still tells what little it can.
		return nil, c.apiError(resp, raw, key)
	}
	if err != nil {
		return nil, c.callError(parent, ctx, &tr, true, false, err)
	}
	if int64(len(raw)) > limit {
		return nil, &TransportError{Kind: KindMalformed, Op: "read response", Err: fmt.Errorf("2xx body exceeds %d bytes", limit)}
	}
	out, err := completionResponse(resp.StatusCode, resp.Header, raw, key)
	if err != nil {
		return nil, err
	}
	out.KeyFingerprint = Fingerprint(key)
	return out, nil
}

// isEventStream reports whether the answer is a server-sent event stream.
func isEventStream(h http.Header) bool {
	ct, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
}

// callError classifies a failed call: the watchdog's verdict when it
// canceled the call (and the caller's ctx, parent, is still live), else
// transportError's. A 2xx stream (streaming set) that breaks after its
// headers for any reason other than the caller's context is KindStreamCut:
// part of it was generated, and paid for.
func (c *Client) callError(parent, ctx context.Context, tr *callTrace, headers, streaming bool, err error) *TransportError {
	op := "await response"
	if headers {
		op = "read response"
	}
	if parent.Err() == nil {
		if se := stalled(ctx); se != nil {
			return &TransportError{Kind: se.kind, Op: op, Err: se}
		}
		if streaming && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || isReset(err)) {
			return &TransportError{Kind: KindStreamCut, Op: op, Err: fmt.Errorf("stream ended before [DONE]: %w", err)}
		}
	}
	return transportError(parent, tr, headers, err)
}

// apiError builds the Error for a non-2xx answer, with the key scrubbed
// from anything the server echoed (raw or JSON-escaped, body and headers)
// and invalid UTF-8 replaced.
func (c *Client) apiError(resp *http.Response, raw []byte, key string) *Error {
	if len(raw) > maxErrorRead {
		raw = raw[:maxErrorRead]
	}
	raw = bytes.ToValidUTF8(scrubBody(raw, key), []byte("\uFFFD"))
	e := ParseErrorBody(resp.StatusCode, raw)
	e.RequestID = requestID(resp.Header, key)
	e.RateLimit = ParseRateLimit(resp.Header)
	e.KeyFingerprint = Fingerprint(key)
	if d, ok := ParseRetryAfter(resp.Header, c.now()); ok {
		e.RetryAfter = d
	}
	// The fields come from the body's unescaped strings; a key split
	// across an escape and a cut is caught here.
	e.Body = bytes.ToValidUTF8(e.Body, []byte("\uFFFD")) // cut mid-rune at MaxErrorBody
	e.Message, e.Type = scrubText(e.Message, key), scrubText(e.Type, key)
	e.Code, e.Param = scrubText(e.Code, key), scrubText(e.Param, key)
	return e
}

// callTrace records how far a call got, for classifying its failure.
type callTrace struct {
	gotConn   atomic.Bool
	firstByte atomic.Bool
}

func (t *callTrace) clientTrace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GotConn:              func(httptrace.GotConnInfo) { t.gotConn.Store(true) },
		GotFirstResponseByte: func() { t.firstByte.Store(true) },
	}
}

// transportError classifies a failed call. headers reports whether the
// response headers had arrived (the failure is in the body).
//
// The order matters:
//  1. A done ctx explains everything after it: the caller canceled
//     (KindCanceled) or the job's deadline passed (KindTimeout). The
//     transport reports these as a mix of context errors and torn-down
//     connections, so ctx itself is asked first.
//  2. *net.DNSError: KindDNS.
//  3. No connection yet (per httptrace), or a *net.OpError from "dial":
//     connect timeout, refused/unreachable, reset.
//  4. Connection up, headers not in: net/http's "timeout awaiting response
//     headers" has no exported sentinel; it is an unexported error whose
//     Timeout() is true. Since ctx is not done (step 1) and the connect
//     finished (step 3), a timeout net.Error at this point can only be
//     ResponseHeaderTimeout: KindHeaderTimeout. Any other failure before
//     the first response byte — ECONNRESET, EPIPE, EOF, and the transport's
//     unexported "server closed idle connection" — means the server or a
//     middlebox dropped the connection: KindReset. After the first byte,
//     an early EOF is KindTruncated and anything else KindMalformed (a
//     garbled status line or header).
//  5. Headers in, body failed: timeout is KindTimeout, a reset KindReset,
//     an early EOF KindTruncated.
func transportError(ctx context.Context, tr *callTrace, headers bool, err error) *TransportError {
	op := "await response"
	switch {
	case headers:
		op = "read response"
	case !tr.gotConn.Load():
		op = "connect"
	}
	return &TransportError{Kind: transportKind(ctx, tr, headers, err), Op: op, Err: err}
}

func transportKind(ctx context.Context, tr *callTrace, headers bool, err error) TransportKind {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.Canceled) {
			return KindCanceled
		}
		return KindTimeout
	}
	if errors.Is(err, context.Canceled) {
		return KindCanceled
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return KindDNS
	}
	var opErr *net.OpError
	dial := errors.As(err, &opErr) && opErr.Op == "dial"
	if dial || (!headers && !tr.gotConn.Load()) {
		switch {
		case isTimeout(err):
			return KindConnectTimeout
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
			errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTDOWN):
			return KindConnectRefused
		case isReset(err), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return KindReset
		}
		return KindOther
	}
	if !headers {
		switch {
		case isTimeout(err):
			return KindHeaderTimeout
		case isReset(err):
			return KindReset
		case !tr.firstByte.Load():
			return KindReset
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return KindTruncated
		}
		return KindMalformed
	}
	switch {
	case isTimeout(err):
		return KindTimeout
	case isReset(err):
		return KindReset
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return KindTruncated
	}
	return KindOther
}

func isTimeout(err error) bool {
	var ne net.Error
	return (errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, os.ErrDeadlineExceeded)
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE)
}
