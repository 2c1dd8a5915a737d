package jobs

import (
	"encoding/json"
	"time"
)

// Result statuses.
const (
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
)

// Tiers that can serve a job, recorded in Result.ServedBy. A fallback model
// is recorded as "fallback:<model>".
const (
	ServedByPrimary = "primary"
	ServedByCache   = "cache"
	ServedByStatic  = "static"
)

// Result is the stored record of a finished job: one per job id.
type Result struct {
	JobID    string `json:"job_id"`
	CustomID string `json:"custom_id,omitempty"`
	BatchID  string `json:"batch_id,omitempty"`
	// Status is StatusSucceeded or StatusFailed.
	Status string `json:"status"`
	// Model is the model that served the response (as the upstream named it).
	Model string `json:"model,omitempty"`
	// ServedBy is the tier that served it: primary, fallback:<model>, cache
	// or static.
	ServedBy string `json:"served_by,omitempty"`
	// Attempts counts upstream calls made for the job.
	Attempts  int   `json:"attempts"`
	LatencyMS int64 `json:"latency_ms"`
	// StatusCode and RequestID are those of the last upstream response.
	StatusCode  int             `json:"status_code,omitempty"`
	RequestID   string          `json:"request_id,omitempty"`
	Response    json.RawMessage `json:"response,omitempty"`
	Usage       *Usage          `json:"usage,omitempty"`
	Error       *ErrorInfo      `json:"error,omitempty"`
	EnqueuedAt  time.Time       `json:"enqueued_at,omitzero"`
	StartedAt   time.Time       `json:"started_at,omitzero"`
	CompletedAt time.Time       `json:"completed_at"`
}

// Usage is the token usage an upstream reported.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
	// Estimated is set when the upstream reported no usage (a stream
	// without a usage chunk) and llmq estimated it; the response body
	// then carries no usage.
	Estimated bool `json:"estimated,omitempty"`
}

// ErrorInfo is the last error of a failed job, as classified by the failure
// policy.
type ErrorInfo struct {
	// Outcome is the failure policy's verdict, e.g. "dead_letter".
	Outcome string `json:"outcome,omitempty"`
	Status  int    `json:"status,omitempty"`
	Type    string `json:"type,omitempty"`
	Code    string `json:"code,omitempty"`
	Param   string `json:"param,omitempty"`
	Message string `json:"message"`
}

// OutputLine is one line of OpenAI Batch output JSONL.
type OutputLine struct {
	ID       string          `json:"id"`
	CustomID string          `json:"custom_id"`
	Response *OutputResponse `json:"response"`
	Error    *OutputError    `json:"error"`
	// ServedBy is llmq's addition: the tier that served the job.
	ServedBy string `json:"served_by,omitempty"`
}

// OutputResponse is the response part of an OpenAI Batch output line.
type OutputResponse struct {
	StatusCode int             `json:"status_code"`
	RequestID  string          `json:"request_id"`
	Body       json.RawMessage `json:"body"`
}

// OutputError is the error part of an OpenAI Batch output line.
type OutputError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// OutputLine converts r to an OpenAI Batch output line. A failed job carries
// its last upstream response (when there was one) and an error.
func (r *Result) OutputLine() OutputLine {
	line := OutputLine{ID: "batch_req_" + r.JobID, CustomID: r.CustomID, ServedBy: r.ServedBy}
	if r.CustomID == "" {
		line.CustomID = r.JobID
	}
	if r.StatusCode != 0 || len(r.Response) > 0 {
		line.Response = &OutputResponse{StatusCode: r.StatusCode, RequestID: r.RequestID, Body: r.Response}
	}
	if r.Error != nil {
		code := r.Error.Code
		if code == "" {
			code = r.Error.Type
		}
		if code == "" {
			code = r.Error.Outcome
		}
		line.Error = &OutputError{Code: code, Message: r.Error.Message}
	}
	return line
}
