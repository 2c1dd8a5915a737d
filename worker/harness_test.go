package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/results"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

// harness is one test's world: an isolated slice of the real Redis, a fake
// upstream over real HTTP, a producer, and worker servers started on demand.
type harness struct {
	t     testing.TB
	env   *llmqtest.Env
	fake  *fakeupstream.Server
	url   string
	prod  *producer.Producer
	store *results.Store
	logs  *llmqtest.Buffer
}

func newHarness(t testing.TB, fcfg fakeupstream.Config) *harness {
	t.Helper()
	env := llmqtest.Redis(t)
	if fcfg.APIKey == "" {
		fcfg.APIKey = "sk-test-good"
	}
	fake, err := fakeupstream.New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake.Handler())
	t.Cleanup(func() { fake.Close(); srv.Close() })
	p, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix), producer.WithAttempts(5))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &harness{t: t, env: env, fake: fake, url: srv.URL + "/v1", prod: p, store: p.Store(), logs: &llmqtest.Buffer{}}
}

// testPolicy is the default policy with short delays.
func testPolicy() *policy.Policy {
	p := policy.DefaultPolicy()
	p.Base, p.Cap = 20*time.Millisecond, 200*time.Millisecond
	return &p
}

// recorder is a Completer that records when each call started.
type recorder struct {
	next  worker.Completer
	mu    sync.Mutex
	calls []time.Time
}

func (r *recorder) Chat(ctx context.Context, body []byte) (*upstream.Response, error) {
	r.mu.Lock()
	r.calls = append(r.calls, time.Now())
	r.mu.Unlock()
	return r.next.Chat(ctx, body)
}

func (r *recorder) times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.calls...)
}

// workerOpts adjusts a test worker's configuration.
type workerOpts struct {
	keys       upstream.KeySource
	headerWait time.Duration
	mod        func(*worker.Config)
}

// startWorker runs a worker server with its own Redis connection (standing
// in for a separate process) until the test ends.
func (h *harness) startWorker(o workerOpts) *recorder {
	h.t.Helper()
	if o.keys == nil {
		o.keys = upstream.StaticKey("sk-test-good")
	}
	if o.headerWait == 0 {
		o.headerWait = 5 * time.Second
	}
	client, err := upstream.New(upstream.Config{BaseURL: h.url, Key: o.keys, ResponseHeaderTimeout: o.headerWait, FirstByteTimeout: o.headerWait})
	if err != nil {
		h.t.Fatal(err)
	}
	rec := &recorder{next: client}
	rdb := h.env.NewClient()
	cfg := worker.Config{
		Redis:           rdb,
		Upstream:        rec,
		Keys:            o.keys,
		Prefix:          h.env.Prefix,
		Concurrency:     4,
		Queues:          map[string]int{h.env.Queue: 1},
		ShutdownTimeout: 5 * time.Second,
		PollInterval:    50 * time.Millisecond,
		Policy:          testPolicy(),
		HoldRecheck:     200 * time.Millisecond,
		CallTimeout:     10 * time.Second,
		Log:             zerolog.New(h.logs),
	}
	if o.mod != nil {
		o.mod(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("worker run: %v", err)
		}
		rdb.Close()
	})
	return rec
}

func body(content string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"model": "gpt-4o-mini", "max_tokens": 16,
		"messages": []map[string]string{{"role": "user", "content": content}}})
	return b
}

func (h *harness) enqueue(id string, opts ...producer.EnqueueOption) {
	h.t.Helper()
	if _, err := h.prod.Enqueue(context.Background(), &jobs.Job{ID: id, Body: body("question " + id)}, opts...); err != nil {
		h.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes. It waits for a
// state, it does not hope for one: the test fails at the deadline.
func (h *harness) waitFor(what string, d time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out after %v waiting for %s\nworker log tail:\n%s", d, what, h.logs.Tail(20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) result(id string) *jobs.Result {
	h.t.Helper()
	var r *jobs.Result
	h.waitFor("result of "+id, 20*time.Second, func() bool {
		var err error
		r, err = h.store.Get(context.Background(), id)
		return err == nil
	})
	return r
}

func (h *harness) taskInfo(id string) *asynq.TaskInfo {
	h.t.Helper()
	insp := asynq.NewInspector(h.env.Opt)
	defer insp.Close()
	info, err := insp.GetTaskInfo(h.env.Queue, id)
	if err != nil {
		h.t.Fatalf("task %s: %v", id, err)
	}
	return info
}

// waitState waits until the task reaches state.
func (h *harness) waitState(id string, state asynq.TaskState) *asynq.TaskInfo {
	h.t.Helper()
	insp := asynq.NewInspector(h.env.Opt)
	defer insp.Close()
	var info *asynq.TaskInfo
	h.waitFor(fmt.Sprintf("task %s to be %s", id, state), 20*time.Second, func() bool {
		var err error
		info, err = insp.GetTaskInfo(h.env.Queue, id)
		return err == nil && info.State == state
	})
	return info
}
