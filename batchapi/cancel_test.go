package batchapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

const cancelTestKey = "sk-cancel-test-key-0123456789"

// cancelTest starts a Service for tenant alice behind an HTTP server and
// returns it, an SDK client of it and alice's queue, removed at the end.
func cancelTest(t *testing.T) (*llmqtest.Env, *Service, openai.Client, string) {
	t.Helper()
	env := llmqtest.Redis(t)
	s, err := New(Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []Client{{Name: "alice", Key: cancelTestKey}}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	q := TenantQueue(env.Queue, "alice")
	t.Cleanup(func() {
		srv.Close()
		s.Close()
		ctx := context.Background()
		if keys, _ := env.Client.Keys(ctx, "asynq:{"+q+"}*").Result(); len(keys) > 0 {
			env.Client.Del(ctx, keys...)
		}
		env.Client.SRem(ctx, "asynq:queues", q)
	})
	c := openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey(cancelTestKey), option.WithMaxRetries(0))
	return env, s, c, q
}

// chatLines returns n batch input lines req-0 ... req-(n-1).
func chatLines(n int) string {
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"p %d"}]}}`+"\n", i, i)
	}
	return in.String()
}

// midCancel cancels a batch through the SDK from inside one of the
// Service's hooks, so the cancel always comes mid-way through the step the
// hook reports.
type midCancel struct {
	ctx     context.Context
	c       openai.Client
	batchID chan string
	once    sync.Once
	err     error
}

func newMidCancel(ctx context.Context, c openai.Client) *midCancel {
	return &midCancel{ctx: ctx, c: c, batchID: make(chan string, 1)}
}

// send cancels the batch, the first time only; a hook calls it.
func (m *midCancel) send() {
	m.once.Do(func() {
		select {
		case id := <-m.batchID:
			_, m.err = m.c.Batches.Cancel(m.ctx, id)
		case <-m.ctx.Done():
			m.err = m.ctx.Err()
		}
	})
}

// run uploads n requests, creates their batch and returns it once
// cancelled.
func (m *midCancel) run(t *testing.T, n int) *openai.Batch {
	t.Helper()
	f, err := m.c.Files.New(m.ctx, openai.FileNewParams{File: openai.File(strings.NewReader(chatLines(n)), "in.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.c.Batches.New(m.ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	m.batchID <- b.ID
	for b.Status != openai.BatchStatusCancelled {
		if m.ctx.Err() != nil {
			t.Fatalf("batch %s still %s", b.ID, b.Status)
		}
		time.Sleep(20 * time.Millisecond) // polls the API as a client does; the deadline of ctx bounds it
		if b, err = m.c.Batches.Get(m.ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	m.once.Do(func() {}) // no cancel after this
	if m.err != nil {
		t.Fatalf("cancel: %v", m.err)
	}
	return b
}

// A cancel that comes while a batch's input is being validated stops the
// validation: nothing is registered or queued, and the batch is cancelled
// with no requests. The cancel is sent through the SDK from the
// validation's first cancel check, so it always comes mid-validation
// (before, the validation read the whole file and the submission began).
func TestCancelStopsTheValidation(t *testing.T) {
	env, s, c, _ := cancelTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const n = 5 * cancelCheckRequests
	m := newMidCancel(ctx, c)
	var validated, submitted atomic.Int64
	s.onValidating = func(lines int) {
		validated.Store(int64(lines))
		m.send()
	}
	s.onProgress = func(done, _ int) { submitted.Store(int64(done)) }
	b := m.run(t, n)
	if got := validated.Load(); got != cancelCheckRequests {
		t.Errorf("the validation went on to request %d after the cancel; want it stopped at the check of request %d", got, cancelCheckRequests)
	}
	if got := submitted.Load(); got != 0 {
		t.Fatalf("%d jobs submitted after a cancel during the validation", got)
	}
	if rc := b.RequestCounts; rc.Total != 0 || rc.Failed != 0 || rc.Completed != 0 {
		t.Errorf("request counts %+v, want none: no request was registered", rc)
	}
	if n, err := env.Client.HLen(ctx, s.st.removedKey(b.ID)).Result(); err != nil || n != 0 {
		t.Errorf("%d jobs were queued and removed again (%v); want none queued", n, err)
	}
}

// A cancel that comes while a batch's jobs are being enqueued stops the
// enqueue (no more jobs are queued), and the batch ends cancelled with
// every request in the error file as batch_cancelled under its custom_id;
// nothing is left queued. The cancel is sent through the SDK from the
// enqueue's first progress report, so it always comes mid-enqueue.
func TestCancelStopsTheEnqueue(t *testing.T) {
	env, s, c, q := cancelTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const n = 3000 // a dozen progress reports
	m := newMidCancel(ctx, c)
	var maxDone atomic.Int64
	s.onProgress = func(done, total int) {
		for {
			old := maxDone.Load()
			if int64(done) <= old || maxDone.CompareAndSwap(old, int64(done)) {
				break
			}
		}
		m.send()
	}
	b := m.run(t, n)
	if got := maxDone.Load(); got >= n {
		t.Fatalf("all %d jobs were enqueued after the cancel: the enqueue did not stop", got)
	}
	if rc := b.RequestCounts; rc.Total != n || rc.Failed != n || rc.Completed != 0 {
		t.Fatalf("request counts %+v, want %d failed of %d", rc, n, n)
	}
	if b.OutputFileID != "" {
		t.Errorf("output file %s for a batch where nothing ran", b.OutputFileID)
	}
	res, err := c.Files.Content(ctx, b.ErrorFileID)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		var l jobs.OutputLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Error == nil || l.Error.Code != CodeBatchCancelled || seen[l.CustomID] || !strings.HasPrefix(l.CustomID, "req-") {
			t.Fatalf("error line %s", sc.Bytes())
		}
		seen[l.CustomID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d requests in the error file, want %d", len(seen), n)
	}
	if queued, err := env.Client.LLen(ctx, "asynq:{"+q+"}:pending").Result(); err != nil || queued != 0 {
		t.Fatalf("%d jobs still queued for the cancelled batch (%v)", queued, err)
	}
}

// removeQueued records every queued job of the batch as removed under its
// custom_id and deletes its task; a job in flight (run by a real asynq
// server) is left to finish, not recorded; a job with a result counts as
// done; a second run changes nothing.
func TestRemoveQueuedKeepsInFlightAndDone(t *testing.T) {
	env := llmqtest.Redis(t)
	s, err := New(Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []Client{{Name: "alice", Key: cancelTestKey}}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q := TenantQueue(env.Queue, "alice")
	t.Cleanup(func() {
		ctx := context.Background()
		if keys, _ := env.Client.Keys(ctx, "asynq:{"+q+"}*").Result(); len(keys) > 0 {
			env.Client.Del(ctx, keys...)
		}
		env.Client.SRem(ctx, "asynq:queues", q)
	})
	ctx := context.Background()
	const n = 2500 // three chunks
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"custom_id":"req-%d","model":"m","messages":[{"role":"user","content":"p"}]}`+"\n", i)
	}
	rec := &batchRecord{Batch: Batch{ID: "batch_rq", Status: StatusCancelling}, Tenant: "alice", Queue: q}
	if _, err := s.prod.EnqueueBatch(ctx, strings.NewReader(in.String()), producer.BatchID(rec.Batch.ID), producer.JobOptions(producer.Queue(q))); err != nil {
		t.Fatal(err)
	}
	// req-7 has its result (it ran); the server below takes the oldest
	// queued job, req-0, and holds it in flight.
	done := jobs.JobID(rec.Batch.ID, "req-7")
	if _, err := s.results.Save(ctx, &jobs.Result{JobID: done, BatchID: rec.Batch.ID, CustomID: "req-7", Status: jobs.StatusSucceeded}); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	if err := insp.DeleteTask(q, done); err != nil {
		t.Fatal(err)
	}
	release, started := make(chan struct{}), make(chan string, 1)
	srv := asynq.NewServer(env.Opt, asynq.Config{Queues: map[string]int{q: 1}, Concurrency: 1, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(jobs.TaskType, func(ctx context.Context, task *asynq.Task) error {
		started <- task.ResultWriter().TaskID()
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	defer close(release)
	var active string
	select {
	case active = <-started:
	case <-time.After(time.Minute): // a guard against a hang, not a timing
		t.Fatal("the server did not start a job")
	}
	srv.Stop() // it takes no more jobs; the one in flight stays active
	for run := range 2 {
		if err := s.removeQueued(ctx, rec); err != nil {
			t.Fatal(err)
		}
		removed, err := env.Client.HGetAll(ctx, s.st.removedKey(rec.Batch.ID)).Result()
		if err != nil || len(removed) != n-2 {
			t.Fatalf("run %d: %d removed (%v), want %d", run, len(removed), err, n-2)
		}
		if removed[active] != "" || removed[done] != "" {
			t.Fatalf("run %d: the job in flight or done was recorded removed", run)
		}
		for jobID, customID := range removed {
			if jobs.JobID(rec.Batch.ID, customID) != jobID {
				t.Fatalf("run %d: %s recorded with custom_id %q", run, jobID, customID)
			}
		}
		if info, err := insp.GetTaskInfo(q, active); err != nil || info.State != asynq.TaskStateActive {
			t.Fatalf("run %d: the job in flight: %+v %v", run, info, err)
		}
		if queued, err := env.Client.LLen(ctx, "asynq:{"+q+"}:pending").Result(); err != nil || queued != 0 {
			t.Fatalf("run %d: %d jobs still queued (%v)", run, queued, err)
		}
	}
}
