package upstream

import (
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
	// request is written. Default 15s. The whole call, body included, is
	// bounded by the context passed to Chat (the job's deadline).
	ResponseHeaderTimeout time.Duration
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
	if cfg.MaxIdleConnsPerHost <= 0 {
		cfg.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Client{endpoint: base + "/chat/completions", key: cfg.Key, userAgent: cfg.UserAgent, now: cfg.Now}
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
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		MaxIdleConns:          cfg.MaxIdleConnsPerHost,
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       90 * time.Second,
		Protocols:             &protocols,
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
}

// Chat POSTs body, an OpenAI chat-completions request, and returns the
// completion. It makes exactly one attempt, bounded by ctx (the job's
// deadline) and the connect and response-header timeouts.
//
// A non-2xx answer is an [*Error]; a call without a usable answer is a
// [*TransportError]; a key that cannot be read wraps [ErrKey]; an Azure body
// without a model wraps [ErrInvalidRequest]. None of them contains the key.
func (c *Client) Chat(ctx context.Context, body []byte) (*Response, error) {
	key, err := c.key.Key()
	if err != nil {
		return nil, fmt.Errorf("upstream chat: %w", err)
	}
	target := c.endpoint
	if c.azure != nil {
		var m struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(body, &m); err != nil || m.Model == "" {
			return nil, fmt.Errorf("%w: Azure needs the body's model field to name the deployment; set \"model\" to the deployment name", ErrInvalidRequest)
		}
		target += "/openai/deployments/" + url.PathEscape(m.Model) + "/chat/completions?api-version=" + url.QueryEscape(c.azure.APIVersion)
	}

	var tr callTrace
	ctx = httptrace.WithClientTrace(ctx, tr.clientTrace())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: build request: %w", ErrInvalidRequest, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	if c.azure != nil {
		req.Header.Set("api-key", key)
	} else {
		req.Header.Set("Authorization", "Bearer "+key)
	}

	resp, err := c.http.Do(req)
	if err != nil {
		return nil, transportError(ctx, &tr, false, err)
	}
	defer resp.Body.Close()

	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
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
		return nil, transportError(ctx, &tr, true, err)
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
