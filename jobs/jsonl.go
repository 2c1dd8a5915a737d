package jobs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// metaKeys are the llmq metadata keys accepted at the top level of an input
// line, in both forms.
var metaKeys = map[string]bool{
	"id": true, "custom_id": true, "batch_id": true, "fallback": true, "deadline": true,
	"max_attempts": true, "allow_cached": true, "allow_static": true,
}

// ParseLine parses one JSONL input line into a Job. Two forms are accepted:
//
//   - OpenAI Batch input: {"custom_id":..., "method":"POST",
//     "url":"/v1/chat/completions", "body":{...}}
//   - short form: {"custom_id":..., "model":..., "messages":[...], ...}, where
//     every key that is not llmq metadata belongs to the body.
//
// Metadata keys (id, custom_id, batch_id, fallback, deadline, max_attempts,
// allow_cached, allow_static) are read from the top level in both forms. The
// job is not validated and has no ID unless the line sets one.
func ParseLine(line []byte) (*Job, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(line, &top); err != nil || top == nil {
		return nil, &ValidationError{Problems: []Problem{{Path: "(line)", Message: "must be a JSON object: " + jsonReason(err)}}}
	}
	c := &checker{}
	j := &Job{}
	c.meta(top, j)
	if body, ok := top["body"]; ok {
		if m, ok := top["method"]; ok && unquote(m) != "POST" {
			c.add("method", "must be \"POST\"")
		}
		if u, ok := top["url"]; ok && unquote(u) != Endpoint && unquote(u) != "/chat/completions" {
			c.add("url", "must be %q: llmq runs chat completions only", Endpoint)
		}
		j.Body = body
	} else {
		rest := map[string]json.RawMessage{}
		for k, v := range top {
			if !metaKeys[k] && k != "method" && k != "url" {
				rest[k] = v
			}
		}
		b, err := json.Marshal(rest)
		if err != nil {
			return nil, fmt.Errorf("parse line: %w", err)
		}
		j.Body = b
	}
	if len(c.problems) > 0 {
		return nil, &ValidationError{Problems: c.problems}
	}
	return j, nil
}

func (c *checker) meta(top map[string]json.RawMessage, j *Job) {
	strField := func(key string, dst *string) {
		if v, ok := top[key]; ok && !isNull(v) {
			if err := json.Unmarshal(v, dst); err != nil {
				c.add(key, "must be a string")
			}
		}
	}
	strField("id", &j.ID)
	strField("custom_id", &j.CustomID)
	strField("batch_id", &j.BatchID)
	if v, ok := top["fallback"]; ok && !isNull(v) {
		if err := json.Unmarshal(v, &j.Fallback); err != nil {
			c.add("fallback", "must be an array of model names")
		}
	}
	if v, ok := top["deadline"]; ok && !isNull(v) {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			c.add("deadline", "must be an RFC 3339 time or a duration such as \"2h\"")
		} else if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			j.Deadline = t
		} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
			j.Deadline = time.Now().Add(d)
		} else {
			c.add("deadline", "must be an RFC 3339 time or a positive duration such as \"2h\", got %q", s)
		}
	}
	if v, ok := top["max_attempts"]; ok && !isNull(v) {
		if err := json.Unmarshal(v, &j.MaxAttempts); err != nil {
			c.add("max_attempts", "must be an integer")
		}
	}
	for key, dst := range map[string]*bool{"allow_cached": &j.AllowCached, "allow_static": &j.AllowStatic} {
		if v, ok := top[key]; ok && !isNull(v) {
			if err := json.Unmarshal(v, dst); err != nil {
				c.add(key, "must be a boolean")
			}
		}
	}
}

// LineError is a problem with one line of a JSONL input.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// ErrLineTooLong is matched by the LineError of a line over MaxLineBytes;
// a Reader cannot go on after it.
var ErrLineTooLong = errors.New("line too long")

// MaxLineBytes is the longest JSONL input line accepted.
const MaxLineBytes = MaxBodyBytes + 64<<10

// Reader reads jobs from JSONL input, one per non-blank line.
type Reader struct {
	sc   *bufio.Scanner
	src  *readErr
	line int
}

// readErr remembers the first failure of the reader it wraps (io.EOF is
// no failure).
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// NewReader returns a Reader over r.
func NewReader(r io.Reader) *Reader {
	src := &readErr{r: r}
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLineBytes)
	return &Reader{sc: sc, src: src}
}

// Next returns the next job and its 1-based line number, io.EOF at the end,
// or a *LineError for a line that cannot be parsed (the Reader can go on).
// A failure of the underlying reader is returned as itself, never as a
// problem of the line it cut short.
func (r *Reader) Next() (*Job, int, error) {
	for r.sc.Scan() {
		r.line++
		if r.src.err != nil {
			// The scanner hands back the bytes before a failed read as a
			// last line: they are not the input's.
			return nil, r.line, fmt.Errorf("read jsonl: %w", r.src.err)
		}
		b := bytes.TrimSpace(r.sc.Bytes())
		if len(b) == 0 {
			continue
		}
		j, err := ParseLine(b)
		if err != nil {
			return nil, r.line, &LineError{Line: r.line, Err: err}
		}
		return j, r.line, nil
	}
	if err := r.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, r.line + 1, &LineError{Line: r.line + 1, Err: fmt.Errorf("%w: the limit is %d bytes", ErrLineTooLong, MaxLineBytes)}
		}
		return nil, r.line, fmt.Errorf("read jsonl: %w", err)
	}
	return nil, r.line, io.EOF
}
