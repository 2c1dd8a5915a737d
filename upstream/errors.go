package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors for failures that happen before any request is sent.
var (
	// ErrKey wraps every failure to obtain the API key (missing, empty or
	// unreadable file, empty variable). It is a fleet-level fault: every
	// call of this process would fail the same way.
	ErrKey = errors.New("upstream API key unavailable")
	// ErrInvalidRequest wraps a request body the client cannot send (for
	// Azure, a body without a model to name the deployment). Retrying the
	// same body cannot help.
	ErrInvalidRequest = errors.New("upstream request invalid")
)

// MaxErrorBody is how much of a non-2xx body an [Error] keeps.
const MaxErrorBody = 4 << 10

// Error is a non-2xx answer from the upstream. Type, Code, Param and Message
// come from the error body when it has one of the known shapes (OpenAI,
// Azure, Anthropic, vLLM-style top-level fields); for any other body Message
// is a printable excerpt of it. Inspect with errors.As.
type Error struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Type is error.type (OpenAI "invalid_request_error", "insufficient_quota",
	// "tokens"...; Anthropic "overloaded_error"...). Empty when absent.
	Type string
	// Code is error.code as text (a string, or a number's literal such as
	// Azure's "429"). Empty when absent or null.
	Code string
	// Param is error.param, e.g. "messages[0].content". Empty when absent.
	Param string
	// Message is error.message, or an excerpt of a body of unknown shape, or
	// the status text when the body is empty.
	Message string
	// RequestID is the server's request id (x-request-id), for support.
	RequestID string
	// RetryAfter is the server's hint from retry-after-ms or Retry-After;
	// 0 means none.
	RetryAfter time.Duration
	// RateLimit holds the x-ratelimit-* headers of the answer.
	RateLimit RateLimit
	// Body is the start of the body, at most MaxErrorBody bytes, with the
	// API key scrubbed and invalid UTF-8 replaced.
	Body []byte
	// KeyFingerprint is the [Fingerprint] of the key the call used (set by
	// [Client.Chat]): a 401 names the key that failed.
	KeyFingerprint string
}

// Error reads like
// "upstream 400 invalid_request_error (code context_length_exceeded, param messages): <message>".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("upstream ")
	b.WriteString(strconv.Itoa(e.StatusCode))
	if e.Type != "" {
		b.WriteByte(' ')
		b.WriteString(e.Type)
	}
	var detail []string
	if e.Code != "" && e.Code != e.Type {
		detail = append(detail, "code "+e.Code)
	}
	if e.Param != "" {
		detail = append(detail, "param "+e.Param)
	}
	if len(detail) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(detail, ", "))
		b.WriteByte(')')
	}
	b.WriteString(": ")
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString(statusText(e.StatusCode))
	}
	return b.String()
}

func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "status " + strconv.Itoa(code)
}

// Field limits keep one odd upstream from flooding logs and results.
const (
	maxFieldLen   = 200
	maxMessageLen = 2000
	excerptLen    = 300
)

// ParseErrorBody builds the Error for a non-2xx answer from its status and
// body; headers are the caller's business (see [ParseRetryAfter],
// [ParseRateLimit]). It understands
//
//	OpenAI     {"error":{"message":..,"type":..,"param":..,"code":..}} (code a string, number or null)
//	Azure      {"error":{"code":"429","message":..}}
//	Anthropic  {"type":"error","error":{"type":"overloaded_error","message":..}}
//	vLLM-like  {"object":"error","message":..,"type":..,"code":400}
//	plain      {"error":"some text"}
//
// and takes anything else (HTML from a proxy, text, garbage, nothing) as an
// opaque body whose excerpt becomes Message. It never panics and always
// returns a non-nil Error.
func ParseErrorBody(status int, body []byte) *Error {
	e := &Error{StatusCode: status, RateLimit: NoRateLimit()}
	if len(body) > 0 {
		n := min(len(body), MaxErrorBody)
		e.Body = bytes.Clone(body[:n])
	}
	if !parseJSONError(e, body) {
		e.Type, e.Code, e.Param = "", "", ""
		e.Message = excerpt(body, excerptLen)
	}
	if e.Message == "" {
		e.Message = statusText(status)
	}
	return e
}

// errorFields are the fields an error object may carry.
type errorFields struct {
	Message json.RawMessage `json:"message"`
	Type    json.RawMessage `json:"type"`
	Code    json.RawMessage `json:"code"`
	Param   json.RawMessage `json:"param"`
}

func (f *errorFields) fill(e *Error) {
	e.Type = clean(scalar(f.Type), maxFieldLen)
	e.Code = clean(scalar(f.Code), maxFieldLen)
	e.Param = clean(scalar(f.Param), maxFieldLen)
	e.Message = clean(scalar(f.Message), maxMessageLen)
}

// parseJSONError fills e from a JSON error body and reports whether the
// body had a known shape.
func parseJSONError(e *Error, body []byte) bool {
	var top struct {
		errorFields
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &top); err != nil {
		return false
	}
	inner := bytes.TrimSpace(top.Error)
	switch {
	case len(inner) > 0 && inner[0] == '{':
		var f errorFields
		if err := json.Unmarshal(inner, &f); err != nil {
			return false
		}
		f.fill(e)
		return true
	case len(inner) > 0 && inner[0] == '"':
		// {"error": "text"}: some compatible servers answer like this.
		var f errorFields
		f.Message = inner
		f.Type, f.Code = top.Type, top.Code
		f.fill(e)
		if e.Type == "error" {
			e.Type = ""
		}
		return true
	case len(top.Message) > 0 || len(top.Code) > 0:
		// Top-level fields (vLLM, llama.cpp, some gateways). A top-level
		// "type" alone is not enough: {"type":"error"} says nothing.
		top.errorFields.fill(e)
		if e.Type == "error" {
			e.Type = ""
		}
		return e.Message != "" || e.Code != ""
	}
	return false
}

// scalar renders a JSON scalar as text: a string as itself, a number or
// boolean as its literal, null or anything else as "".
func scalar(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return ""
		}
		return s
	case '{', '[', 'n':
		return ""
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return ""
	}
	return string(raw)
}

// clean makes s safe for one log line: valid UTF-8, no control characters,
// runs of whitespace folded to one space, at most max bytes (cut on a rune
// boundary, marked with "…").
func clean(s string, limit int) string {
	var b strings.Builder
	space := false
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > limit {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// excerpt returns a printable start of an opaque body.
func excerpt(body []byte, limit int) string {
	if len(body) > 4*limit {
		body = body[:4*limit]
	}
	return clean(string(body), limit)
}

// TransportKind says which way a call failed without a usable answer.
type TransportKind string

// Transport failure kinds. All but KindCanceled are the upstream's (or the
// network's) fault.
const (
	// KindConnectTimeout: the TCP connect or TLS handshake did not finish
	// within Config.ConnectTimeout.
	KindConnectTimeout TransportKind = "connect_timeout"
	// KindConnectRefused: the connection was refused or the host or network
	// is unreachable.
	KindConnectRefused TransportKind = "connect_refused"
	// KindDNS: the host name did not resolve.
	KindDNS TransportKind = "dns"
	// KindReset: the connection broke before a response began (reset, broken
	// pipe, EOF, server closed it) or while the body was read (reset).
	KindReset TransportKind = "reset"
	// KindHeaderTimeout: the request was sent but the response headers did
	// not arrive within Config.ResponseHeaderTimeout.
	KindHeaderTimeout TransportKind = "header_timeout"
	// KindTimeout: the job's deadline (the call's context) passed, or the
	// body read timed out.
	KindTimeout TransportKind = "timeout"
	// KindCanceled: the caller canceled the context (worker shutdown). Not
	// the upstream's fault.
	KindCanceled TransportKind = "canceled"
	// KindMalformed: a response arrived but is unusable: a 2xx body that is
	// not a chat.completion with choices, or a garbled HTTP response.
	KindMalformed TransportKind = "malformed"
	// KindTruncated: the response ended early (unexpected EOF in the
	// headers, the body or its JSON).
	KindTruncated TransportKind = "truncated"
	// KindStreamCut: a streamed answer ended (EOF, reset) before its
	// [DONE]. Part of it was generated and paid for.
	KindStreamCut TransportKind = "stream_cut"
	// KindStreamStall: a streamed answer went silent: no first event within
	// Config.FirstEventTimeout of its headers, or no event within
	// Config.IdleTimeout of the previous one. Part of it may have been
	// paid for.
	KindStreamStall TransportKind = "stream_stall"
	// KindOther: any other failure (TLS certificate, proxy, ...).
	KindOther TransportKind = "other"
)

// TransportError is a call that produced no usable answer: a network
// failure, a timeout, a cancel, or a 2xx whose body cannot be used. Inspect
// with errors.As; Kind is the classification, Err the underlying error.
type TransportError struct {
	// Kind classifies the failure.
	Kind TransportKind
	// Op is the phase that failed: "connect", "await response",
	// "read response" or "decode response".
	Op string
	// Err is the underlying error.
	Err error
}

// Error reads like "upstream connect failed (connect_refused): <cause>".
func (e *TransportError) Error() string {
	msg := "upstream " + e.Op + " failed (" + string(e.Kind) + ")"
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *TransportError) Unwrap() error { return e.Err }
