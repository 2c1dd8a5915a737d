package cache

import (
	"encoding/json"
	"time"
)

// Static returns a chat.completion body whose one choice is text, for the
// static tier: the same shape as an upstream answer (object, created,
// model, choices with an assistant message and finish_reason "stop", usage
// with zero tokens), so exports and consumers read it like any other. id
// should identify the job, e.g. "chatcmpl-static-<job id>".
func Static(id, model, text string, now time.Time) json.RawMessage {
	type message struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	type choice struct {
		Index        int     `json:"index"`
		Message      message `json:"message"`
		Logprobs     any     `json:"logprobs"`
		FinishReason string  `json:"finish_reason"`
	}
	body := struct {
		ID      string   `json:"id"`
		Object  string   `json:"object"`
		Created int64    `json:"created"`
		Model   string   `json:"model"`
		Choices []choice `json:"choices"`
		Usage   struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}{
		ID: id, Object: "chat.completion", Created: now.Unix(), Model: model,
		Choices: []choice{{Index: 0, Message: message{Role: "assistant", Content: text}, FinishReason: "stop"}},
	}
	b, _ := json.Marshal(body) // plain structs of strings and numbers: cannot fail
	return b
}
