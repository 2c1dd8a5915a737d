package jobs_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/llmq/llmq/jobs"
)

func TestResultCompletion(t *testing.T) {
	usage := &jobs.Usage{PromptTokens: 9, CompletionTokens: 3, TotalTokens: 12}
	ok := func(body string, u *jobs.Usage) *jobs.Result {
		return &jobs.Result{JobID: "j", Status: jobs.StatusSucceeded, Model: "gpt-4o-mini-2024-07-18", Response: json.RawMessage(body), Usage: u}
	}
	for _, tc := range []struct {
		name string
		res  *jobs.Result
		want jobs.Completion
		err  error
	}{
		{"text", ok(`{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"},{"index":1,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}]}`, usage),
			jobs.Completion{Text: "Hello!", FinishReason: "stop", Model: "gpt-4o-mini-2024-07-18", Choices: 2, Usage: *usage}, nil},
		{"content parts", ok(`{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]},"finish_reason":"stop"}]}`, usage),
			jobs.Completion{Text: "ab", FinishReason: "stop", Model: "gpt-4o-mini-2024-07-18", Choices: 1, Usage: *usage}, nil},
		{"tool calls only", ok(`{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"x\"}"}}]},"finish_reason":"tool_calls"}]}`, usage),
			jobs.Completion{FinishReason: "tool_calls", Model: "gpt-4o-mini-2024-07-18", Choices: 1, Usage: *usage,
				ToolCalls: []jobs.ToolCall{{ID: "call_1", Type: "function", Name: "lookup", Arguments: `{"q":"x"}`}}}, nil},
		{"refusal", ok(`{"choices":[{"message":{"content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}`, usage),
			jobs.Completion{Refusal: "I can't help with that.", FinishReason: "stop", Model: "gpt-4o-mini-2024-07-18", Choices: 1, Usage: *usage}, nil},
		{"usage from the body when the record has none", &jobs.Result{JobID: "j", Status: jobs.StatusSucceeded,
			Response: json.RawMessage(`{"model":"m","choices":[{"message":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`)},
			jobs.Completion{Text: "x", FinishReason: "stop", Model: "m", Choices: 1, Usage: jobs.Usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3}}, nil},
		{"an unreadable body usage keeps the answer", &jobs.Result{JobID: "j", Status: jobs.StatusSucceeded,
			Response: json.RawMessage(`{"model":"m","choices":[{"message":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":"many"}}`)},
			jobs.Completion{Text: "x", FinishReason: "stop", Model: "m", Choices: 1}, nil},
		{"no choices", ok(`{"choices":[]}`, usage), jobs.Completion{}, jobs.ErrNoCompletion},
		{"null choice", ok(`{"choices":[null]}`, usage), jobs.Completion{}, jobs.ErrNoCompletion},
		{"no message", ok(`{"choices":[{}]}`, usage), jobs.Completion{}, jobs.ErrNoCompletion},
		{"empty body", ok(``, usage), jobs.Completion{}, jobs.ErrNoCompletion},
		{"not JSON", ok(`<html>`, usage), jobs.Completion{}, jobs.ErrNoCompletion},
		{"failed", &jobs.Result{JobID: "j", Status: jobs.StatusFailed, Response: json.RawMessage(`{"error":{}}`),
			Error: &jobs.ErrorInfo{Outcome: "dead_letter", Status: 400, Message: "upstream 400 invalid_request_error"}}, jobs.Completion{}, jobs.ErrFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.res.Completion()
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestCompletionOfAFailedJobSaysWhy(t *testing.T) {
	res := &jobs.Result{JobID: "b:7", Status: jobs.StatusFailed,
		Error: &jobs.ErrorInfo{Outcome: "dead_letter", Status: 400, Message: "upstream 400 invalid_request_error"}}
	_, err := res.Completion()
	var fe *jobs.FailedError
	if !errors.As(err, &fe) || fe.Info.Status != 400 {
		t.Fatalf("err = %#v, want a *FailedError carrying the job's error", err)
	}
	if want := `job "b:7" failed: dead_letter: upstream 400 invalid_request_error`; err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
}
