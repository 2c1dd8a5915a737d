package worker_test

import (
	"testing"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/worker"
)

// The producer enqueues every task with the retry margin the worker's
// outcome vocabulary needs, so no snooze ever lets asynq archive a job.
func TestProducerKeepsTheWorkersRetryMargin(t *testing.T) {
	h := newHarness(t, fakeupstream.Config{})
	h.enqueue("margin", producer.MaxAttempts(3))
	if got, want := h.taskInfo("margin").MaxRetry, 3+worker.RetryMargin; got != want {
		t.Fatalf("task MaxRetry = %d, want attempts 3 + worker.RetryMargin %d", got, want)
	}
	if producer.RetryMargin != worker.RetryMargin {
		t.Fatalf("producer.RetryMargin %d != worker.RetryMargin %d", producer.RetryMargin, worker.RetryMargin)
	}
}
