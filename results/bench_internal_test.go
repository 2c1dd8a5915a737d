package results

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/llmq/llmq/jobs"
)

// benchBody is a chat.completion as the upstream client assembles it from
// the fake upstream's stream (make bench-overhead's answer).
const benchBody = `{"id":"chatcmpl-fake0000000000000000001","object":"chat.completion","created":1796173835,"model":"gpt-4o-mini",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"echo: prompt 17","refusal":null},"logprobs":null,"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":10,"completion_tokens":7,"total_tokens":17},"service_tier":"default","system_fingerprint":"fp_fake"}`

// benchRecord is a success record as the worker builds it.
func benchRecord() *jobs.Result {
	start := time.Date(2026, 12, 2, 1, 2, 3, 456789012, time.Local)
	return &jobs.Result{JobID: "bench:c17", CustomID: "c17", BatchID: "bench", Status: jobs.StatusSucceeded,
		Model: "gpt-4o-mini", ServedBy: jobs.ServedByPrimary, Attempts: 1, LatencyMS: 3, StatusCode: 200,
		RequestID: "req_0123456789abcdef", Response: json.RawMessage(benchBody),
		Usage:     &jobs.Usage{PromptTokens: 10, CompletionTokens: 7, TotalTokens: 17},
		StartedAt: start, CompletedAt: start.Add(3 * time.Millisecond)}
}

// BenchmarkEncodeRecord is Save's per-job encoding of a success record.
//
//	go test -run '^$' -bench EncodeRecord -benchmem ./results/
func BenchmarkEncodeRecord(b *testing.B) {
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodeRecord(r); err != nil {
			b.Fatal(err)
		}
	}
}
