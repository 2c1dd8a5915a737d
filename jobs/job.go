package jobs

import (
	"encoding/json"
	"fmt"
	"time"
)

// TaskType is the asynq task type name of a completion job.
const TaskType = "llmq:completion"

// Endpoint is the only OpenAI endpoint llmq runs jobs against, as it appears
// in the url field of an OpenAI Batch input line.
const Endpoint = "/v1/chat/completions"

// Job is one chat-completion job: the request body sent upstream, untouched,
// plus the metadata llmq needs to run it.
type Job struct {
	// ID identifies the job; it is the asynq task ID, so enqueueing the same
	// ID twice is a no-op. Required.
	ID string `json:"id"`
	// CustomID is the caller's own identifier, echoed in the output line.
	CustomID string `json:"custom_id,omitempty"`
	// BatchID groups jobs enqueued together; results are exported by batch.
	BatchID string `json:"batch_id,omitempty"`
	// Fallback lists models to try, in order, when the primary model cannot
	// serve the job (model not found, permission, context length, outage).
	Fallback []string `json:"fallback,omitempty"`
	// Deadline, when set, is the instant after which the job is not tried
	// again: it is dead-lettered with its last error.
	Deadline time.Time `json:"deadline,omitzero"`
	// MaxAttempts overrides the configured attempts for this job (0: default).
	MaxAttempts int `json:"max_attempts,omitempty"`
	// AllowCached lets a cached response for the same request serve the job
	// when every model tier fails.
	AllowCached bool `json:"allow_cached,omitempty"`
	// AllowStatic lets the configured static text serve the job as the last
	// tier.
	AllowStatic bool `json:"allow_static,omitempty"`
	// Body is the OpenAI chat-completions request body. Unknown fields are
	// passed to the upstream untouched.
	Body json.RawMessage `json:"body"`
}

// Encode returns the task payload of j.
func (j *Job) Encode() ([]byte, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("encode job %q: %w", j.ID, err)
	}
	return b, nil
}

// Decode parses a task payload into a Job and validates it. An error means
// the payload can never be run (it is poison): the worker dead-letters it.
func Decode(payload []byte) (*Job, error) {
	j, _, err := DecodeRequest(payload)
	return j, err
}

// DecodeRequest is Decode that also returns the typed view of the job's
// body (what Request returns), read once with the validation: the
// worker's path, which needs both. The Request's raw fields may share
// memory with the Job's Body (capped slices: appending to them copies):
// treat the Body as read-only while the Request is in use.
func DecodeRequest(payload []byte) (*Job, *Request, error) {
	var j Job
	if !fastJob(payload, &j) { // the usual payload, read in one pass
		j = Job{}
		if err := json.Unmarshal(payload, &j); err != nil {
			return nil, nil, &ValidationError{Problems: []Problem{{Path: fieldOf(err, "(payload)"), Message: "cannot decode the job payload: " + jsonReason(err)}}}
		}
	}
	req, err := j.validate(false)
	if err != nil {
		return nil, nil, err
	}
	return &j, req, nil
}

// Request decodes the parts of the body llmq reads. Call it on a validated
// job; the error is non-nil only when the body is not a JSON object of the
// expected shape.
func (j *Job) Request() (*Request, error) {
	var r Request
	if err := json.Unmarshal(j.Body, &r); err != nil {
		return nil, fmt.Errorf("job %q: decode body: %w", j.ID, err)
	}
	return &r, nil
}

// WithModel returns a copy of body with its model field replaced, every other
// field kept byte for byte. Fallback tiers use it.
func WithModel(body json.RawMessage, model string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("rewrite model: decode body: %w", err)
	}
	mb, _ := json.Marshal(model)
	m["model"] = mb
	out, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("rewrite model: encode body: %w", err)
	}
	return out, nil
}

// Request is the typed view of a chat-completions body: the fields llmq
// validates, estimates and caches on. It is never sent upstream; the raw body
// is.
type Request struct {
	Model               string          `json:"model"`
	Messages            []Message       `json:"messages"`
	MaxTokens           *int            `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int            `json:"max_completion_tokens,omitempty"`
	N                   *int            `json:"n,omitempty"`
	Temperature         *float64        `json:"temperature,omitempty"`
	ResponseFormat      json.RawMessage `json:"response_format,omitempty"`
	Tools               json.RawMessage `json:"tools,omitempty"`
	Stream              bool            `json:"stream,omitempty"`
}

// CompletionLimit returns the completion tokens the request may produce per
// choice (max_completion_tokens, else max_tokens), or def when it sets none.
func (r *Request) CompletionLimit(def int) int {
	switch {
	case r.MaxCompletionTokens != nil:
		return *r.MaxCompletionTokens
	case r.MaxTokens != nil:
		return *r.MaxTokens
	}
	return def
}

// Choices returns n, or 1 when unset.
func (r *Request) Choices() int {
	if r.N != nil && *r.N > 0 {
		return *r.N
	}
	return 1
}

// Message is one chat message. Content is either a string or an array of
// content parts; it is kept raw.
type Message struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content,omitempty"`
	Name       string          `json:"name,omitempty"`
	ToolCalls  json.RawMessage `json:"tool_calls,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
}

// ContentPart is one element of a multi-part message content.
type ContentPart struct {
	Type     string `json:"type"`
	Text     string `json:"text,omitempty"`
	ImageURL *struct {
		URL    string `json:"url"`
		Detail string `json:"detail,omitempty"`
	} `json:"image_url,omitempty"`
}

// Summary returns a readable view of the job for operators (llmq dlq show,
// asynqmon): its metadata, model and messages, each message's text cut to
// n runes. Jobs carry no credentials, so nothing else is hidden.
func (j *Job) Summary(n int) map[string]any {
	out := map[string]any{"id": j.ID}
	if j.CustomID != "" {
		out["custom_id"] = j.CustomID
	}
	if j.BatchID != "" {
		out["batch_id"] = j.BatchID
	}
	if len(j.Fallback) > 0 {
		out["fallback"] = j.Fallback
	}
	if !j.Deadline.IsZero() {
		out["deadline"] = j.Deadline
	}
	req, err := j.Request()
	if err != nil {
		out["body_error"] = err.Error()
		return out
	}
	out["model"] = req.Model
	msgs := make([]map[string]string, 0, len(req.Messages))
	for _, m := range req.Messages {
		text := string(m.Content)
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			text = s
		}
		if r := []rune(text); len(r) > n {
			text = string(r[:n]) + "…"
		}
		msgs = append(msgs, map[string]string{"role": m.Role, "content": text})
	}
	out["messages"] = msgs
	out["body_bytes"] = len(j.Body)
	return out
}
