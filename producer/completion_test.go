package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
)

// Completion reads what a worker stored from the fake upstream: a text
// answer, a tool-calls-only answer, and a failed job.
func TestCompletionOfStoredResults(t *testing.T) {
	env := llmqtest.Redis(t)
	fake, stop := runWorker(env.RedisURL(), env.Queue, env.Prefix, nil)
	defer stop()
	if err := fake.SetModelFaults("gpt-refused", "400"); err != nil {
		t.Fatal(err)
	}
	p := newProducer(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	enqueue := func(id, body string) *jobs.Result {
		t.Helper()
		if _, err := p.Enqueue(ctx, &jobs.Job{ID: id, Body: json.RawMessage(body)}); err != nil {
			t.Fatal(err)
		}
		res, err := p.Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	c, err := enqueue("text", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}`).Completion()
	if err != nil || c.Text != "echo: Say hello" || c.FinishReason != "stop" || c.Choices != 1 || c.Model != "gpt-4o-mini" ||
		c.Usage.PromptTokens == 0 || c.Usage.CompletionTokens == 0 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
		t.Fatalf("text answer: %+v, %v", c, err)
	}

	c, err = enqueue("tool", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"weather in Oslo"}],`+
		`"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}`).Completion()
	if err != nil || c.Text != "" || c.FinishReason != "tool_calls" || len(c.ToolCalls) != 1 ||
		c.ToolCalls[0].Name != "get_weather" || c.ToolCalls[0].ID == "" || !json.Valid([]byte(c.ToolCalls[0].Arguments)) {
		t.Fatalf("tool-calls answer: %+v, %v", c, err)
	}

	_, err = enqueue("refused", `{"model":"gpt-refused","messages":[{"role":"user","content":"x"}]}`).Completion()
	var fe *jobs.FailedError
	if !errors.Is(err, jobs.ErrFailed) || !errors.As(err, &fe) || fe.Info == nil || fe.Info.Status != 400 {
		t.Fatalf("failed job: %v, want a *jobs.FailedError with the upstream's 400", err)
	}
}
