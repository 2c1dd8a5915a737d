package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Completion is the common case of a succeeded job's answer, read from its
// stored chat.completion: the first choice and the usage. Read
// Result.Response for everything else (other choices, logprobs, unknown
// fields).
type Completion struct {
	// Text is the first choice's message content; "" when the model only
	// called tools or refused. Content given as parts has its text parts
	// joined.
	Text string
	// Refusal is the first choice's refusal, when the model refused.
	Refusal string
	// FinishReason is why the first choice ended: "stop", "length",
	// "tool_calls", "content_filter", ...
	FinishReason string
	// ToolCalls are the first choice's tool calls, in order.
	ToolCalls []ToolCall
	// Model is the model that served the job, as the upstream named it.
	Model string
	// Choices counts the answer's choices (more than 1 for n > 1).
	Choices int
	// Usage is the tokens the upstream reported (Estimated when it
	// reported none and llmq estimated them).
	Usage Usage
}

// ToolCall is one tool call of an answer.
type ToolCall struct {
	ID string
	// Type is "function" for function calls.
	Type string
	// Name is the function's name.
	Name string
	// Arguments is the JSON text of the arguments, as the model wrote it
	// (not necessarily valid JSON).
	Arguments string
}

// ErrFailed is matched by the error of Result.Completion for a job that
// failed: errors.As gives the *FailedError.
var ErrFailed = errors.New("job failed")

// ErrNoCompletion is matched by the error of Result.Completion when a
// succeeded result holds no readable chat.completion with a choice.
var ErrNoCompletion = errors.New("no chat completion in the result")

// FailedError is the error of Result.Completion for a failed job: its last
// error as the failure policy classified it.
type FailedError struct {
	JobID string
	// Info is the job's last error (nil when the record names none).
	Info *ErrorInfo
}

// Error names the job and, when known, its outcome and message.
func (e *FailedError) Error() string {
	if e.Info == nil {
		return fmt.Sprintf("job %q failed", e.JobID)
	}
	msg := e.Info.Message
	if e.Info.Outcome != "" {
		msg = e.Info.Outcome + ": " + msg
	}
	return fmt.Sprintf("job %q failed: %s", e.JobID, msg)
}

// Is reports that a FailedError is an ErrFailed.
func (e *FailedError) Is(target error) bool { return target == ErrFailed }

// Completion decodes the stored answer of a succeeded job: the first
// choice's text, refusal, finish reason and tool calls, and the usage. A
// failed job gives a *FailedError (ErrFailed); a body without a choice
// gives an error matching ErrNoCompletion. It decodes Response on every
// call.
func (r *Result) Completion() (Completion, error) {
	if r.Status != StatusSucceeded {
		return Completion{}, &FailedError{JobID: r.JobID, Info: r.Error}
	}
	var body struct {
		Model   string `json:"model"`
		Choices []*struct {
			FinishReason string `json:"finish_reason"`
			Message      *struct {
				Content   json.RawMessage `json:"content"`
				Refusal   *string         `json:"refusal"`
				ToolCalls []struct {
					ID       string `json:"id"`
					Type     string `json:"type"`
					Function struct {
						Name      string `json:"name"`
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"message"`
		} `json:"choices"`
		Usage json.RawMessage `json:"usage"` // read apart: an odd usage never hides the answer
	}
	if len(r.Response) == 0 {
		return Completion{}, fmt.Errorf("job %q: %w: the response body is empty", r.JobID, ErrNoCompletion)
	}
	if err := json.Unmarshal(r.Response, &body); err != nil {
		return Completion{}, fmt.Errorf("job %q: %w: %v", r.JobID, ErrNoCompletion, err)
	}
	if len(body.Choices) == 0 || body.Choices[0] == nil || body.Choices[0].Message == nil {
		return Completion{}, fmt.Errorf("job %q: %w: the answer has no first choice with a message", r.JobID, ErrNoCompletion)
	}
	first := body.Choices[0]
	text, err := contentText(first.Message.Content)
	if err != nil {
		return Completion{}, fmt.Errorf("job %q: %w: choices[0].message.content: %v", r.JobID, ErrNoCompletion, err)
	}
	c := Completion{Text: text, FinishReason: first.FinishReason, Model: r.Model, Choices: len(body.Choices)}
	if c.Model == "" {
		c.Model = body.Model
	}
	if first.Message.Refusal != nil {
		c.Refusal = *first.Message.Refusal
	}
	for _, tc := range first.Message.ToolCalls {
		c.ToolCalls = append(c.ToolCalls, ToolCall{ID: tc.ID, Type: tc.Type, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
	}
	if r.Usage != nil {
		c.Usage = *r.Usage // read leniently by the worker when it stored the answer
	} else {
		_ = json.Unmarshal(body.Usage, &c.Usage) // best effort: zero when unreadable
	}
	return c, nil
}

// contentText returns a message content's text: a string, the text parts
// of an array of content parts joined, or "" for null or absent.
func contentText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []ContentPart
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("neither a string nor content parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String(), nil
}
