package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/llmq/llmq/jobs"
)

// Redacted replaces the API key wherever an upstream echoed it.
const Redacted = "[redacted]"

// minSecretLen is the shortest key scrubbed: a shorter one would match
// ordinary text.
const minSecretLen = 8

// completionResponse turns a 2xx answer (status, headers and the whole
// body, read in one piece or assembled from a stream) into a Response: the
// key scrubbed from the body and the request id, invalid UTF-8 replaced by
// U+FFFD, the body checked to be a usable chat.completion.
func completionResponse(status int, h http.Header, raw []byte, key string) (*Response, error) {
	raw = scrubBody(raw, key)
	if !utf8.Valid(raw) {
		// A paid answer with a mangled byte is kept, not bought again:
		// the bad bytes become U+FFFD (only JSON strings can hold them,
		// so the body stays the same JSON).
		raw = bytes.ToValidUTF8(raw, []byte("\uFFFD"))
	}
	out, err := decodeCompletion(raw)
	if err != nil {
		return nil, err
	}
	out.StatusCode = status
	out.RequestID = requestID(h, key)
	out.RateLimit = ParseRateLimit(h)
	return out, nil
}

// requestID returns the server's request id, printable, without the key.
func requestID(h http.Header, key string) string {
	for _, k := range []string{"x-request-id", "request-id", "apim-request-id"} {
		if v := h.Get(k); v != "" {
			return scrubText(clean(v, maxFieldLen), key)
		}
	}
	return ""
}

// scrubText returns s without key: a value holding the key, as is or
// %-escaped, is replaced by Redacted where it appears (or whole, when only
// its unescaped form holds it).
func scrubText(s, key string) string {
	if len(key) < minSecretLen {
		return s
	}
	s = strings.ReplaceAll(s, key, Redacted)
	if u, err := url.QueryUnescape(s); err == nil && strings.Contains(u, key) {
		return Redacted
	}
	return s
}

// scrubBody returns body with every copy of key replaced by Redacted: raw
// copies, and copies inside JSON strings written with escapes
// (`\u0073\u006b-…`), which the string's unescaped value reveals. Such a
// string is re-encoded without the key. The body need not be valid JSON (an
// error page, a body cut short): every "…" literal is examined.
func scrubBody(body []byte, key string) []byte {
	if len(key) < minSecretLen {
		return body
	}
	if bytes.Contains(body, []byte(key)) {
		body = bytes.ReplaceAll(body, []byte(key), []byte(Redacted))
	}
	if bytes.IndexByte(body, '\\') < 0 {
		return body // no escapes: nothing hides the key
	}
	var out []byte
	last := 0
	for i := 0; i < len(body); i++ {
		if body[i] != '"' {
			continue
		}
		end, closed, escaped := stringEnd(body, i)
		if escaped {
			lit := body[i:end]
			if !closed {
				lit = append(bytes.Clone(lit), '"')
			}
			var s string
			if json.Unmarshal(lit, &s) == nil && strings.Contains(s, key) {
				enc := encodeString(strings.ReplaceAll(s, key, Redacted))
				if !closed {
					enc = enc[:len(enc)-1]
				}
				out = append(append(out, body[last:i]...), enc...)
				last = end
			}
		}
		i = end - 1
	}
	if out == nil {
		return body
	}
	return append(out, body[last:]...)
}

// stringEnd finds the end of the JSON string literal starting at the quote
// body[start]: the index after its closing quote, whether it has one, and
// whether it holds a backslash escape.
func stringEnd(body []byte, start int) (end int, closed, escaped bool) {
	for k := start + 1; k < len(body); k++ {
		switch body[k] {
		case '\\':
			escaped = true
			k++
		case '"':
			return k + 1, true, escaped
		}
	}
	return len(body), false, escaped
}

// encodeString encodes s as a JSON string without HTML escaping.
func encodeString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// completion is the part of a chat.completion body the client checks.
type completion struct {
	Object  string            `json:"object"`
	Model   string            `json:"model"`
	Choices []json.RawMessage `json:"choices"`
	Usage   json.RawMessage   `json:"usage"`
}

// choice is the part of a choice the client checks.
type choice struct {
	Message *struct {
		Content      json.RawMessage `json:"content"`
		ToolCalls    json.RawMessage `json:"tool_calls"`
		FunctionCall json.RawMessage `json:"function_call"`
		Refusal      json.RawMessage `json:"refusal"`
		Audio        json.RawMessage `json:"audio"`
	} `json:"message"`
}

// decodeCompletion checks that raw is one chat.completion object whose
// every choice carries an assistant message with an answer: content (text,
// even empty, or parts), tool calls, a function call, a refusal or audio.
// A body that ends early is KindTruncated; anything else unusable is
// KindMalformed. Usage is read leniently (see parseUsage): an unreadable
// usage never makes a paid answer unusable.
func decodeCompletion(raw []byte) (*Response, error) {
	malformed := func(err error) error {
		return &TransportError{Kind: KindMalformed, Op: "decode response", Err: err}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var c completion
	if err := dec.Decode(&c); err != nil {
		switch {
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, &TransportError{Kind: KindTruncated, Op: "decode response", Err: fmt.Errorf("2xx body ends mid-JSON after %d bytes: %w", len(raw), err)}
		case errors.Is(err, io.EOF):
			return nil, malformed(errors.New("2xx body is empty"))
		}
		return nil, malformed(fmt.Errorf("2xx body is not a chat.completion object: %w", err))
	}
	if rest := bytes.TrimSpace(raw[dec.InputOffset():]); len(rest) > 0 {
		return nil, malformed(fmt.Errorf("2xx body has %d bytes after the JSON object", len(rest)))
	}
	if c.Object != "" && c.Object != "chat.completion" {
		return nil, malformed(fmt.Errorf("2xx body is a %q object, want chat.completion", clean(c.Object, maxFieldLen)))
	}
	if len(c.Choices) == 0 {
		return nil, malformed(errors.New("2xx body has no choices"))
	}
	for i, rc := range c.Choices {
		if err := checkChoice(rc); err != nil {
			return nil, malformed(fmt.Errorf("2xx body's choices[%d] %w", i, err))
		}
	}
	out := &Response{Body: raw, Model: c.Model}
	out.Usage, out.UsageErr = parseUsage(c.Usage)
	return out, nil
}

// checkChoice reports what makes one choice unusable, or nil.
func checkChoice(raw json.RawMessage) error {
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return errors.New("is not an object")
	}
	var ch choice
	if err := json.Unmarshal(raw, &ch); err != nil {
		return fmt.Errorf("is unreadable: %w", err)
	}
	m := ch.Message
	if m == nil {
		return errors.New("has no message")
	}
	switch {
	case kindOf(m.Content) == '"', kindOf(m.Content) == '[' && len(bytes.TrimSpace(m.Content)) > 2,
		kindOf(m.ToolCalls) == '[' && len(bytes.TrimSpace(m.ToolCalls)) > 2,
		kindOf(m.FunctionCall) == '{', kindOf(m.Refusal) == '"', kindOf(m.Audio) == '{':
		return nil
	}
	return errors.New("message has neither content nor tool_calls nor refusal")
}

// kindOf returns the first byte of a JSON value ('"', '{', '[', 'n', a
// digit...), or 0 for an absent one.
func kindOf(raw json.RawMessage) byte {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return 0
	}
	return t[0]
}

// parseUsage reads a usage object leniently: each count may be an integer,
// a float holding one (5.0; a fraction is rounded), or a string holding
// either; absent or null counts are 0, and a missing total is prompt +
// completion. An absent or null usage is zero without error. Anything else
// (a negative or non-numeric count, usage not an object) gives zero usage
// and an error saying why: the caller keeps its own estimate.
func parseUsage(raw json.RawMessage) (jobs.Usage, error) {
	if k := kindOf(raw); k == 0 || k == 'n' {
		return jobs.Usage{}, nil
	}
	var f struct {
		Prompt     json.RawMessage `json:"prompt_tokens"`
		Completion json.RawMessage `json:"completion_tokens"`
		Total      json.RawMessage `json:"total_tokens"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return jobs.Usage{}, fmt.Errorf("usage is not an object: %s", excerpt(raw, maxFieldLen))
	}
	var u jobs.Usage
	for _, c := range []struct {
		name string
		raw  json.RawMessage
		dst  *int
	}{{"prompt_tokens", f.Prompt, &u.PromptTokens}, {"completion_tokens", f.Completion, &u.CompletionTokens}, {"total_tokens", f.Total, &u.TotalTokens}} {
		n, err := count(c.raw)
		if err != nil {
			return jobs.Usage{}, fmt.Errorf("usage.%s %w", c.name, err)
		}
		*c.dst = n
	}
	if kindOf(f.Total) == 0 || kindOf(f.Total) == 'n' {
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
	}
	return u, nil
}

// maxCount bounds a token count: no call uses more.
const maxCount = 1 << 40

// count reads one token count; see parseUsage.
func count(raw json.RawMessage) (int, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return 0, nil
	}
	s := string(t)
	if t[0] == '"' {
		if err := json.Unmarshal(t, &s); err != nil {
			return 0, fmt.Errorf("is unreadable: %s", excerpt(t, maxFieldLen))
		}
		s = strings.TrimSpace(s)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > maxCount {
		return 0, fmt.Errorf("is not a token count: %s", excerpt(t, maxFieldLen))
	}
	return int(math.Round(v)), nil
}
