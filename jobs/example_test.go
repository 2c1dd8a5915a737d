package jobs_test

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/llmq/llmq/jobs"
)

// A stored result's answer without declaring the chat.completion's shape.
func ExampleResult_Completion() {
	res := &jobs.Result{JobID: "job-1", Status: jobs.StatusSucceeded, Model: "gpt-4o-mini",
		Response: json.RawMessage(`{"object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,` +
			`"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}]}`),
		Usage: &jobs.Usage{PromptTokens: 9, CompletionTokens: 3, TotalTokens: 12}}
	c, err := res.Completion()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Text, c.FinishReason, c.Usage.TotalTokens)

	failed := &jobs.Result{JobID: "job-2", Status: jobs.StatusFailed,
		Error: &jobs.ErrorInfo{Outcome: "dead_letter", Status: 400, Message: "upstream 400 invalid_request_error"}}
	_, err = failed.Completion()
	fmt.Println(errors.Is(err, jobs.ErrFailed), err)
	// Output:
	// Hello! stop 12
	// true job "job-2" failed: dead_letter: upstream 400 invalid_request_error
}
