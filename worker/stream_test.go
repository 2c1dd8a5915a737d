package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

// Short stand-ins for the 15 s first-byte and idle timeouts: an answer that
// takes longStreamGeneration is "a 25 s answer" against them.
const (
	shortFirstByte       = 800 * time.Millisecond
	longStreamGeneration = 3 * time.Second
)

// longQuestion makes the fake answer with 16 tokens (max_tokens), streamed
// one every ~190 ms over longStreamGeneration.
const longQuestion = "please write a long and careful answer about the sea and the sky today"

// warm sends one request to the fake, so its tokenizer is loaded before a
// test times its answers (the first load takes about a second under -race),
// and then zeroes its counters.
func (h *harness) warm() {
	h.t.Helper()
	client, err := upstream.New(upstream.Config{BaseURL: h.url, Key: upstream.StaticKey("sk-test-good"), DisableStream: true})
	if err != nil {
		h.t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	if _, err := client.Chat(context.Background(), body("warm up")); err != nil {
		h.t.Fatalf("warm-up call: %v", err)
	}
	h.fake.Reset()
}

// withClient makes the worker call the fake through a client built from cfg.
func (h *harness) withClient(cfg upstream.Config) func(*worker.Config) {
	cfg.BaseURL, cfg.Key = h.url, upstream.StaticKey("sk-test-good")
	client, err := upstream.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(client.CloseIdleConnections)
	return func(c *worker.Config) { c.Upstream = &recorder{next: client} }
}

// TestLongAnswerStreamsAndIsPaidOnce: an answer whose generation takes five
// times the first-byte timeout, streamed steadily, is one upstream call and
// one attempt; so is a reasoning model's answer whose stream stays silent
// after its headers for as long (OpenAI sends nothing while it reasons: the
// wait for the first event has its own, long bound). Without streaming the
// same answer times out waiting for its headers on every attempt (each one
// paid by the provider).
func TestLongAnswerStreamsAndIsPaidOnce(t *testing.T) {
	for name, fcfg := range map[string]fakeupstream.Config{
		"generating": {GenerationTime: longStreamGeneration},
		"thinking":   {ThinkTime: longStreamGeneration},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, fcfg)
			h.warm()
			h.startWorker(workerOpts{mod: h.withClient(upstream.Config{FirstByteTimeout: shortFirstByte, IdleTimeout: shortFirstByte})})
			if _, err := h.prod.Enqueue(t.Context(), &jobs.Job{ID: "long", Body: body(longQuestion)}); err != nil {
				t.Fatal(err)
			}
			r := h.result("long")
			if r.Status != jobs.StatusSucceeded || r.Attempts != 1 {
				t.Fatalf("result = %s after %d attempts, want succeeded after 1: %+v\n%s", r.Status, r.Attempts, r.Error, h.logs.Tail(5))
			}
			if st := h.fake.Stats(); st.Requests != 1 || st.CompletionTokens == 0 {
				t.Errorf("fake served %d requests (%d completion tokens), want exactly 1 paid call", st.Requests, st.CompletionTokens)
			}
			if r.Usage == nil || r.Usage.Estimated || r.Usage.CompletionTokens == 0 {
				t.Errorf("usage = %+v, want the provider's", r.Usage)
			}
			if !strings.Contains(string(r.Response), `"object":"chat.completion"`) {
				t.Errorf("stored response %s is not a chat.completion", r.Response)
			}
		})
	}
}

func TestLongAnswerWithoutStreamingTimesOut(t *testing.T) {
	h := newHarness(t, fakeupstream.Config{GenerationTime: longStreamGeneration})
	h.warm()
	h.startWorker(workerOpts{mod: h.withClient(upstream.Config{ResponseHeaderTimeout: shortFirstByte, DisableStream: true})})
	if _, err := h.prod.Enqueue(t.Context(), &jobs.Job{ID: "long", Body: body(longQuestion)}, producer.MaxAttempts(2)); err != nil {
		t.Fatal(err)
	}
	r := h.result("long")
	if r.Status != jobs.StatusFailed {
		t.Fatalf("result = %s, want failed: the plain answer's headers come after the header timeout", r.Status)
	}
	if st := h.fake.Stats(); st.Requests != 2 {
		t.Errorf("fake served %d requests, want 2 (one per attempt)", st.Requests)
	}
}

// TestBrokenStreamsAreRetried: a stream that stalls or is cut is retried
// (and the retry succeeds); an error event is classified like the status it
// names (400: dead letter after one call).
func TestBrokenStreamsAreRetried(t *testing.T) {
	for _, tc := range []struct {
		faults   string
		status   string
		attempts int
		requests int64
		class    string
	}{
		{"stall,200", jobs.StatusSucceeded, 2, 2, "stream_broken"},
		{"cut,200", jobs.StatusSucceeded, 2, 2, "stream_broken"},
		{"streamerror,200", jobs.StatusSucceeded, 2, 2, "server_error"},
		{"streamerror:400,200", jobs.StatusFailed, 1, 1, "invalid_request"},
	} {
		t.Run(tc.faults, func(t *testing.T) {
			h := newHarness(t, fakeupstream.Config{})
			h.warm()
			if err := h.fake.SetFaults(tc.faults); err != nil {
				t.Fatal(err)
			}
			h.startWorker(workerOpts{mod: h.withClient(upstream.Config{FirstByteTimeout: shortFirstByte, IdleTimeout: shortFirstByte})})
			h.enqueue("j")
			r := h.result("j")
			if r.Status != tc.status || r.Attempts != tc.attempts {
				t.Fatalf("result = %s after %d attempts, want %s after %d: %+v", r.Status, r.Attempts, tc.status, tc.attempts, r.Error)
			}
			if st := h.fake.Stats(); st.Requests != tc.requests {
				t.Errorf("fake served %d requests, want %d", st.Requests, tc.requests)
			}
			if !strings.Contains(h.logs.String(), `"class":"`+tc.class+`"`) {
				t.Errorf("no upstream_call logged with class %s:\n%s", tc.class, h.logs.Tail(10))
			}
		})
	}
}
