package jobs_test

import (
	"testing"

	"github.com/llmq/llmq/jobs"
)

// benchPayloads are task payloads as the producer writes them: a batch
// line parsed by ParseLine, given its batch and id, then encoded.
var benchPayloads = map[string]string{
	// The job of make bench-overhead and bench-e2e.
	"short": `{"custom_id":"c17","model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt 17"}],"max_tokens":32}`,
	// A typical chat job: system prompt, a few turns, sampling options.
	"chat": `{"custom_id":"req-00017","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini",` +
		`"messages":[{"role":"system","content":"You are a careful assistant. Answer in one short paragraph, cite no sources, and say so when you do not know."},` +
		`{"role":"user","content":"Summarise the plot of Hamlet in three sentences."},` +
		`{"role":"assistant","content":"Prince Hamlet learns from his father's ghost that his uncle Claudius murdered the king. He feigns madness while testing the truth. The play ends with nearly everyone dead."},` +
		`{"role":"user","content":[{"type":"text","text":"Now do Macbeth, in the same style."}]}],` +
		`"max_completion_tokens":256,"temperature":0.2,"top_p":0.9,"response_format":{"type":"text"},"user":"u-42"}}`,
}

// BenchmarkDecodeRequest is the worker's per-job decode of a payload
// (jobs.DecodeRequest: decode, validate, typed view). allocs/op and B/op
// are exact; ns/op is noisy on a shared machine.
//
//	go test -run '^$' -bench DecodeRequest -benchmem ./jobs/
func BenchmarkDecodeRequest(b *testing.B) {
	for _, name := range []string{"short", "chat"} {
		j, err := jobs.ParseLine([]byte(benchPayloads[name]))
		if err != nil {
			b.Fatal(err)
		}
		j.BatchID = "bench"
		j.ID = jobs.JobID(j.BatchID, j.CustomID)
		payload, err := j.Encode()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				if _, _, err := jobs.DecodeRequest(payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
