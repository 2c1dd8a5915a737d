package upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmq/llmq/jobs"
)

// Stream timeouts applied to zero Config fields.
const (
	// DefaultFirstByteTimeout bounds the wait, once the request is sent, for
	// a streamed answer's headers (OpenAI sends them at once).
	DefaultFirstByteTimeout = 15 * time.Second
	// DefaultFirstEventTimeout bounds the wait, once a stream's headers are
	// in, for its first event: how long the model may think before it
	// writes. OpenAI's Chat Completions stream carries nothing while a
	// reasoning model reasons (minutes at a high effort), so by default
	// only the call's own bound (call_timeout, 10m) limits it; lower it for
	// models that answer at once to catch a stalled stream sooner.
	DefaultFirstEventTimeout = 10 * time.Minute
	// DefaultIdleTimeout bounds the silence between two events of a stream.
	DefaultIdleTimeout = 15 * time.Second
)

// streamBody returns body with "stream": true and
// "stream_options": {"include_usage": true} set (other stream_options kept).
func streamBody(body []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%w: the body is not a JSON object: %v", ErrInvalidRequest, err)
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := m["stream_options"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &opts); err != nil {
			return nil, fmt.Errorf("%w: stream_options is not an object", ErrInvalidRequest)
		}
	}
	opts["include_usage"] = json.RawMessage("true")
	ob, err := json.Marshal(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	m["stream"] = json.RawMessage("true")
	m["stream_options"] = ob
	out, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return out, nil
}

// watchdog cancels a call whose upstream went silent for too long: it is
// re-armed at every sign of life and cancels the call's context with the
// cause it was armed with when it fires.
type watchdog struct {
	mu     sync.Mutex
	t      *time.Timer
	cause  *stallError
	cancel context.CancelCauseFunc
}

// stallError is the cause a watchdog cancels a call with.
type stallError struct {
	kind  TransportKind
	phase string
	after time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("no %s within %s", e.phase, e.after)
}

func newWatchdog(cancel context.CancelCauseFunc) *watchdog { return &watchdog{cancel: cancel} }

// arm (re)starts the countdown: after d without another arm or stop, the
// call is canceled with a stallError of kind.
func (w *watchdog) arm(d time.Duration, kind TransportKind, phase string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cause == nil || w.cause.kind != kind || w.cause.phase != phase || w.cause.after != d {
		w.cause = &stallError{kind: kind, phase: phase, after: d}
	}
	if w.t == nil {
		w.t = time.AfterFunc(d, w.fire)
		return
	}
	w.t.Reset(d)
}

func (w *watchdog) fire() {
	w.mu.Lock()
	c := w.cause
	w.mu.Unlock()
	w.cancel(c)
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Stop()
	}
}

// stalled returns the watchdog's cause if it canceled ctx.
func stalled(ctx context.Context) *stallError {
	var se *stallError
	if errors.As(context.Cause(ctx), &se) {
		return se
	}
	return nil
}

// streamBufSize is the read buffer of a streamed answer; Client.readers
// recycles them, so a call allocates none.
const streamBufSize = 32 << 10

// sseEvent is one server-sent event.
type sseEvent struct {
	name string
	data []byte
}

// sseReader reads server-sent events (the WHATWG EventSource format:
// "event:" and "data:" lines, ":" comments, a blank line ends an event). It
// calls alive on every line read, so silence is measured in bytes, not in
// events: a provider's keep-alive comments count as life.
type sseReader struct {
	r     *bufio.Reader
	alive func()
	read  int64
	limit int64
}

// errStreamTooLarge is a stream longer than maxResponseBody.
var errStreamTooLarge = errors.New("stream exceeds the response size limit")

// next returns the next event, io.EOF at a clean end of input, or the read
// error.
func (s *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	var data bytes.Buffer
	hasData := false
	for {
		line, err := s.r.ReadBytes('\n')
		s.read += int64(len(line))
		if s.read > s.limit {
			return ev, errStreamTooLarge
		}
		if len(line) > 0 {
			s.alive()
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) == 0 && !hasData && ev.name == "" {
				return ev, io.EOF
			}
			if errors.Is(err, io.EOF) {
				// The input ended inside an event: the stream was cut.
				return ev, io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if hasData || ev.name != "" {
				ev.data = data.Bytes()
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.name = string(value)
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.Write(value)
			hasData = true
		}
	}
}

// streamResult is an assembled stream.
type streamResult struct {
	body  []byte
	asm   *assembler
	usage bool // the stream reported usage
}

// readStream reads an SSE chat-completions stream to its [DONE] and
// assembles it. headerless errors are classified by the caller.
func (c *Client) readStream(body io.Reader, wd *watchdog) (*streamResult, error) {
	br := c.readers.Get().(*bufio.Reader)
	br.Reset(body)
	defer func() {
		br.Reset(nil) // nothing read from it outlives the call: ReadBytes copies
		c.readers.Put(br)
	}()
	sr := &sseReader{
		r:     br,
		alive: func() { wd.arm(c.idleTimeout, KindStreamStall, "stream event") },
		limit: maxResponseBody,
	}
	asm := newAssembler()
	for {
		ev, err := sr.next()
		if err != nil {
			switch {
			case errors.Is(err, errStreamTooLarge):
				return nil, &TransportError{Kind: KindMalformed, Op: "read response", Err: err}
			case errors.Is(err, io.EOF):
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		data := bytes.TrimSpace(ev.data)
		if string(data) == "[DONE]" {
			out, err := asm.completion()
			if err != nil {
				return nil, &TransportError{Kind: KindMalformed, Op: "assemble stream", Err: err}
			}
			return &streamResult{body: out, asm: asm, usage: asm.usage != nil}, nil
		}
		if e := streamError(ev.name, data); e != nil {
			return nil, e
		}
		if len(data) == 0 {
			continue
		}
		if err := asm.add(data); err != nil {
			return nil, &TransportError{Kind: KindMalformed, Op: "assemble stream", Err: err}
		}
	}
}

// errorEvent is an error event inside a stream: its data and the status it
// names. Chat turns it into the *Error of that status.
type errorEvent struct {
	status int
	data   []byte
}

func (e *errorEvent) Error() string {
	return fmt.Sprintf("error event naming status %d in the stream", e.status)
}

// streamError returns the error event of a stream's event: an event named
// "error", or a data object with an "error" member (OpenAI writes
// `data: {"error": {...}}`). Its status is the one the event names (see
// errorEventStatus). It returns nil for any other event.
func streamError(name string, data []byte) *errorEvent {
	if name != "error" {
		if !bytes.HasPrefix(data, []byte("{")) || !bytes.Contains(data, []byte(`"error"`)) {
			return nil
		}
		var probe struct {
			Error json.RawMessage `json:"error"`
		}
		if json.Unmarshal(data, &probe) != nil || isNull(probe.Error) {
			return nil
		}
	}
	return &errorEvent{status: errorEventStatus(data), data: bytes.Clone(data)}
}

// errorEventStatus is the HTTP status an error event names: a numeric
// "status" or "code" (top level or in "error"), else the status its type or
// code stands for in the OpenAI and Anthropic error tables, else 500 (the
// server failed mid-answer).
func errorEventStatus(data []byte) int {
	var top struct {
		Status json.RawMessage `json:"status"`
		Code   json.RawMessage `json:"code"`
		Type   json.RawMessage `json:"type"`
		Error  json.RawMessage `json:"error"`
	}
	_ = json.Unmarshal(data, &top)
	var inner struct {
		Status json.RawMessage `json:"status"`
		Code   json.RawMessage `json:"code"`
		Type   json.RawMessage `json:"type"`
	}
	if b := bytes.TrimSpace(top.Error); len(b) > 0 && b[0] == '{' {
		_ = json.Unmarshal(b, &inner)
	}
	for _, raw := range []json.RawMessage{inner.Status, inner.Code, top.Status, top.Code} {
		if n, err := strconv.Atoi(scalar(raw)); err == nil && n >= 400 && n <= 599 {
			return n
		}
	}
	for _, raw := range []json.RawMessage{inner.Code, inner.Type, top.Type} {
		if s, ok := errorTypeStatus(strings.ToLower(scalar(raw))); ok {
			return s
		}
	}
	return 500
}

// errorTypeStatus maps an error type or code to the status OpenAI and
// Anthropic answer it with.
func errorTypeStatus(name string) (int, bool) {
	switch name {
	case "invalid_request_error", "context_length_exceeded":
		return 400, true
	case "authentication_error", "invalid_api_key":
		return 401, true
	case "billing_error":
		return 402, true
	case "permission_error":
		return 403, true
	case "not_found_error", "model_not_found":
		return 404, true
	case "request_too_large":
		return 413, true
	case "rate_limit_exceeded", "rate_limit_error", "insufficient_quota", "tokens", "requests":
		return 429, true
	case "server_error", "api_error":
		return 500, true
	case "overloaded_error":
		return 529, true
	}
	return 0, false
}

// estimateUsage estimates the usage of a stream that reported none: the
// prompt as the budget estimates it, the completion at four characters a
// token. The result is marked Estimated.
func estimateUsage(est *jobs.Estimator, body []byte, generatedChars int) jobs.Usage {
	u := jobs.Usage{CompletionTokens: (generatedChars + 3) / 4, Estimated: true}
	var req jobs.Request
	if json.Unmarshal(body, &req) == nil {
		u.PromptTokens = est.PromptTokens(&req)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}
