package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/llmq/llmq/internal/jsonscan"
)

// MaxBodyBytes is the largest request body llmq accepts for one job.
const MaxBodyBytes = 8 << 20

// MaxIDLength is the longest job id, custom_id or batch id accepted.
const MaxIDLength = 256

// MaxAttempts is the most attempts (upstream calls that may fail) a job may
// ask for. asynq keeps a task's retry count in 32 bits and the producer adds
// a margin to it, so an unbounded value would wrap negative and archive the
// job at its first rate limit; no job needs more than this.
const MaxAttempts = 100

// The ranges of a body's numeric fields, checked by the checker and by the
// fast path (fastbody.go) alike: from 1, or 0 for the sampling fields.
const (
	maxTokensLimit = 1 << 30 // max_tokens, max_completion_tokens
	maxN           = 128
	maxTemperature = 2
	maxTopP        = 1
)

// MaxFallbacks is the longest fallback list a job may carry: each entry can
// cost one upstream call per attempt.
const MaxFallbacks = 8

// ErrInvalid is matched (errors.Is) by every validation error.
var ErrInvalid = errors.New("invalid job")

// Problem is one thing wrong with a job, at a JSON field path such as
// "messages[2].role".
type Problem struct {
	Path    string
	Message string
}

func (p Problem) String() string { return p.Path + ": " + p.Message }

// ValidationError lists every problem found in a job.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return "invalid job: " + strings.Join(parts, "; ")
}

// Is reports that a ValidationError is an ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Roles are the message roles the chat-completions API accepts.
var roles = []string{"system", "user", "assistant", "tool", "developer"}

// checker collects a job's problems; req is the typed view of its body,
// read while checking it (nil when the body is not an object).
type checker struct {
	problems []Problem
	req      *Request
}

func (c *checker) add(path, format string, args ...any) {
	c.problems = append(c.problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Validate checks the job's metadata and request body and returns a
// *ValidationError listing every problem with its field path, or nil.
// Besides the body it checks that the batch id uses only BatchIDAlphabet,
// that a job id holding IDSeparator is the one JobID gives its batch and
// custom_id, that max_attempts is at most MaxAttempts and the fallback list
// at most MaxFallbacks long.
func (j *Job) Validate() error {
	_, err := j.validate(true)
	return err
}

// validate checks j; with enqueue false (a payload already in Redis, read by
// the worker) it skips the id-shape rules added after jobs were enqueued
// without them, so a running batch is never turned into poison by an
// upgrade. It returns the typed view of the body it read (see Request).
func (j *Job) validate(enqueue bool) (*Request, error) {
	c := &checker{}
	c.id("id", j.ID, true)
	c.id("custom_id", j.CustomID, false)
	c.id("batch_id", j.BatchID, false)
	if enqueue && len(c.problems) == 0 {
		c.batchID("batch_id", j.BatchID, false)
		c.jobIDShape(j)
	}
	if len(j.Fallback) > MaxFallbacks {
		c.add("fallback", "must list at most %d models, got %d", MaxFallbacks, len(j.Fallback))
	}
	for i, m := range j.Fallback {
		if strings.TrimSpace(m) == "" {
			c.add(fmt.Sprintf("fallback[%d]", i), "must be a model name")
		}
	}
	switch {
	case j.MaxAttempts < 0:
		c.add("max_attempts", "must be 0 (default) or more")
	case j.MaxAttempts > MaxAttempts:
		c.add("max_attempts", "must be at most %d, got %d", MaxAttempts, j.MaxAttempts)
	}
	c.body(j.Body)
	if len(c.problems) > 0 {
		return nil, &ValidationError{Problems: c.problems}
	}
	return c.req, nil
}

func (c *checker) id(path, v string, required bool) {
	switch {
	case v == "" && required:
		c.add(path, "is required")
	case len(v) > MaxIDLength:
		c.add(path, "must be at most %d bytes, got %d", MaxIDLength, len(v))
	case !utf8.ValidString(v):
		c.add(path, "must be valid UTF-8")
	case strings.ContainsAny(v, "\x00\n\r"):
		c.add(path, "must not contain NUL or line breaks")
	}
}

func (c *checker) body(body json.RawMessage) {
	if req, ok := fastRequest(body); ok {
		c.req = req
		return
	}
	c.readBody(body)
}

// readBody checks any body, reading it as encoding/json does.
func (c *checker) readBody(body json.RawMessage) {
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		c.add("body", "is required: an OpenAI chat-completions request object")
		return
	case len(body) > MaxBodyBytes:
		c.add("body", "is %d bytes; the limit is %d bytes", len(body), MaxBodyBytes)
		return
	case !utf8.Valid(body):
		c.add("body", "must be valid UTF-8")
		return
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		c.add("body", "must be a JSON object: %s", jsonReason(err))
		return
	}
	before := len(c.problems)
	defer func() {
		// The worker reads the body through Request, whose keys match case-insensitively.
		var r Request
		err := json.Unmarshal(body, &r)
		if err == nil {
			c.req = &r
		} else if len(c.problems) == before {
			c.add(fieldOf(err, "body"), "cannot be read as a chat-completions request: %s (keys that differ only in letter case, such as \"model\" and \"MODEL\", collide)", jsonReason(err))
		}
	}()
	if !c.str("model", m["model"], true) {
		// reported
	} else if model := unquote(m["model"]); strings.TrimSpace(model) == "" {
		c.add("model", "must not be empty")
	}
	c.messages(m["messages"])
	c.intRange("max_tokens", m["max_tokens"], 1, maxTokensLimit)
	c.intRange("max_completion_tokens", m["max_completion_tokens"], 1, maxTokensLimit)
	c.intRange("n", m["n"], 1, maxN)
	c.numRange("temperature", m["temperature"], 0, maxTemperature)
	c.numRange("top_p", m["top_p"], 0, maxTopP)
	if v, ok := m["stream"]; ok && !isNull(v) {
		var s bool
		if err := json.Unmarshal(v, &s); err != nil {
			c.add("stream", "must be a boolean")
		} else if s {
			c.add("stream", "must be false: llmq stores whole responses, remove stream")
		}
	}
	c.responseFormat(m["response_format"])
	c.tools(m["tools"])
}

func (c *checker) messages(raw json.RawMessage) {
	if raw == nil || isNull(raw) {
		c.add("messages", "is required: a non-empty array of messages")
		return
	}
	// One decode reads an array of objects (or nulls), the common case;
	// anything else is read element by element, to say which is wrong.
	var objs []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &objs); err != nil {
		var msgs []json.RawMessage
		if err := json.Unmarshal(raw, &msgs); err != nil {
			c.add("messages", "must be an array of message objects")
			return
		}
		objs = make([]map[string]json.RawMessage, len(msgs))
		for i, mr := range msgs {
			if err := json.Unmarshal(mr, &objs[i]); err != nil {
				objs[i] = nil
			}
		}
	}
	if len(objs) == 0 {
		c.add("messages", "must not be empty")
		return
	}
	for i, m := range objs {
		c.message(i, m)
	}
}

// message checks messages[i], m (nil when it is not an object). Its field
// paths are only written out for a problem.
func (c *checker) message(i int, m map[string]json.RawMessage) {
	p := func() string { return "messages[" + strconv.Itoa(i) + "]" }
	if m == nil {
		c.add(p(), "must be an object with role and content")
		return
	}
	role := ""
	if ok, problem := strCheck(m["role"], true); problem != "" {
		c.addProblem(p()+".role", problem)
	} else if ok {
		role = unquote(m["role"])
		if !contains(roles, role) {
			c.add(p()+".role", "must be one of %s", strings.Join(roles, ","))
		}
	}
	c.content(func() string { return p() + ".content" }, m["content"], role)
	if role == "tool" {
		if _, problem := strCheck(m["tool_call_id"], true); problem != "" {
			c.addProblem(p()+".tool_call_id", problem)
		}
	}
	if v, ok := m["name"]; ok {
		if _, problem := strCheck(v, false); problem != "" {
			c.addProblem(p()+".name", problem)
		}
	}
}

// content checks a message's content; path gives its field path.
func (c *checker) content(path func() string, raw json.RawMessage, role string) {
	if raw == nil || isNull(raw) {
		if role != "assistant" { // assistant messages with tool_calls may omit content
			c.add(path(), "is required for role %q", role)
		}
		return
	}
	switch raw[0] {
	case '"':
		return
	case '[':
		var parts []json.RawMessage
		if err := json.Unmarshal(raw, &parts); err != nil {
			c.add(path(), "must be a string or an array of content parts")
			return
		}
		for i, pr := range parts {
			pp := path() + "[" + strconv.Itoa(i) + "]"
			var part map[string]json.RawMessage
			if err := json.Unmarshal(pr, &part); err != nil || part == nil {
				c.add(pp, "must be a content part object with a type")
				continue
			}
			if !c.str(pp+".type", part["type"], true) {
				continue
			}
			switch t := unquote(part["type"]); t {
			case "text":
				c.str(pp+".text", part["text"], true)
			case "image_url":
				var iu struct {
					URL *string `json:"url"`
				}
				if err := json.Unmarshal(part["image_url"], &iu); err != nil || iu.URL == nil || *iu.URL == "" {
					c.add(pp+".image_url.url", "is required for an image_url part")
				}
			case "input_audio", "file", "refusal":
			default:
				c.add(pp+".type", "must be one of text,image_url,input_audio,file,refusal, got %q", t)
			}
		}
	default:
		c.add(path(), "must be a string or an array of content parts")
	}
}

func (c *checker) responseFormat(raw json.RawMessage) {
	if raw == nil || isNull(raw) {
		return
	}
	var rf map[string]json.RawMessage
	if err := json.Unmarshal(raw, &rf); err != nil || rf == nil {
		c.add("response_format", "must be an object with a type")
		return
	}
	if c.str("response_format.type", rf["type"], true) {
		if t := unquote(rf["type"]); !contains([]string{"text", "json_object", "json_schema"}, t) {
			c.add("response_format.type", "must be one of text,json_object,json_schema")
		} else if t == "json_schema" && rf["json_schema"] == nil {
			c.add("response_format.json_schema", "is required when type is json_schema")
		}
	}
}

func (c *checker) tools(raw json.RawMessage) {
	if raw == nil || isNull(raw) {
		return
	}
	var tools []json.RawMessage
	if err := json.Unmarshal(raw, &tools); err != nil {
		c.add("tools", "must be an array of tool objects")
		return
	}
	for i, tr := range tools {
		p := fmt.Sprintf("tools[%d]", i)
		var t struct {
			Type     *string `json:"type"`
			Function *struct {
				Name *string `json:"name"`
			} `json:"function"`
		}
		if err := json.Unmarshal(tr, &t); err != nil {
			c.add(p, "must be a tool object {type, function}")
			continue
		}
		if t.Type == nil || *t.Type != "function" && *t.Type != "custom" {
			c.add(p+".type", "must be \"function\" or \"custom\"")
		}
		if t.Type != nil && *t.Type == "function" && (t.Function == nil || t.Function.Name == nil || *t.Function.Name == "") {
			c.add(p+".function.name", "is required")
		}
	}
}

// str checks that raw is a JSON string; it reports a problem and returns
// false when raw is absent (and required) or not a string.
func (c *checker) str(path string, raw json.RawMessage, required bool) bool {
	ok, problem := strCheck(raw, required)
	if problem != "" {
		c.addProblem(path, problem)
	}
	return ok
}

// strCheck is str's verdict on raw: whether it is a string, and the
// problem to report ("" for none).
func strCheck(raw json.RawMessage, required bool) (ok bool, problem string) {
	if raw == nil || isNull(raw) {
		if required {
			return false, "is required"
		}
		return false, ""
	}
	if _, plain := plainString(raw); plain {
		return true, ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return false, "must be a string"
	}
	return true, ""
}

// addProblem adds a problem whose message is final (no formatting).
func (c *checker) addProblem(path, message string) {
	c.problems = append(c.problems, Problem{Path: path, Message: message})
}

func (c *checker) intRange(path string, raw json.RawMessage, lo, hi int64) {
	if raw == nil || isNull(raw) {
		return
	}
	var n int64
	var err error
	if jsonscan.Integer(raw) {
		n, err = strconv.ParseInt(string(raw), 10, 64) // what encoding/json does with it
	} else {
		err = json.Unmarshal(raw, &n)
	}
	if err != nil {
		c.add(path, "must be an integer")
		return
	}
	if n < lo || n > hi {
		c.add(path, "must be between %d and %d, got %d", lo, hi, n)
	}
}

func (c *checker) numRange(path string, raw json.RawMessage, lo, hi float64) {
	if raw == nil || isNull(raw) {
		return
	}
	var f float64
	var err error
	if isNumber(raw) {
		f, err = strconv.ParseFloat(string(raw), 64) // what encoding/json does with it
	} else {
		err = json.Unmarshal(raw, &f)
	}
	if err != nil {
		c.add(path, "must be a number")
		return
	}
	if f < lo || f > hi {
		c.add(path, "must be between %g and %g, got %g", lo, hi, f)
	}
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func unquote(raw json.RawMessage) string {
	if s, ok := plainString(raw); ok {
		return string(s)
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// plainString returns the text of raw when raw is a JSON string that
// encoding/json decodes to its bytes as they are: quoted, without escapes
// or control characters, valid UTF-8. ok is false for anything else,
// which the caller decodes with encoding/json.
func plainString(raw []byte) (s []byte, ok bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	s = raw[1 : len(raw)-1]
	for _, c := range s {
		if c < 0x20 || c == '"' || c == '\\' {
			return nil, false
		}
	}
	return s, utf8.Valid(s)
}

// isNumber reports whether raw is exactly a JSON number.
func isNumber(raw []byte) bool {
	end, ok := jsonscan.Number(raw, 0)
	return ok && end == len(raw)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// fieldOf returns the JSON field a decode error names, or def.
func fieldOf(err error, def string) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return te.Field
	}
	return def
}

func jsonReason(err error) string {
	if err == nil {
		return "got null"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "got " + te.Value
	}
	return err.Error()
}
