package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/redisconn"
)

var helloBody = json.RawMessage(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}`)

// Wait and Result on an id no job has answer ErrNotFound at once; before,
// Wait polled until its context ended.
func TestWaitAndResultOnAnUnknownIDReturnNotFound(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.Enqueue(ctx, &jobs.Job{ID: "known", Body: helloBody}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(ctx, "never-enqueued"); !errors.Is(err, producer.ErrNotFound) || ctx.Err() != nil {
		t.Fatalf("Wait = %v (ctx %v), want ErrNotFound at once", err, ctx.Err())
	}
	if _, err := p.Result(ctx, "never-enqueued"); !errors.Is(err, producer.ErrNotFound) {
		t.Fatalf("Result = %v, want ErrNotFound", err)
	}
}

// A job enqueued but not run is pending: Result says so, Wait keeps
// waiting, also when the job is in a queue this producer never used.
func TestPendingJobIsNotNotFound(t *testing.T) {
	env, other := llmqtest.Redis(t), llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx := context.Background()
	if _, err := p.Enqueue(ctx, &jobs.Job{ID: "p1", Body: helloBody}); err != nil {
		t.Fatal(err)
	}
	// Another process enqueues to another queue.
	p2, err := producer.New(env.Opt, producer.WithQueue(other.Queue), producer.WithPrefix(env.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if _, err := p2.Enqueue(ctx, &jobs.Job{ID: "p2", Body: helloBody}, producer.ProcessAt(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"p1", "p2"} {
		if _, err := p.Result(ctx, id); !errors.Is(err, producer.ErrPending) || errors.Is(err, producer.ErrNotFound) {
			t.Fatalf("Result(%s) = %v, want ErrPending", id, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := p.Wait(wctx, id)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait(%s) = %v, want it to wait until its context ends", id, err)
		}
	}
}

// A result outlives its asynq task (retention over, task deleted): Result
// and Wait still return it.
func TestResultOutlivesItsTask(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx := context.Background()
	if _, err := p.Enqueue(ctx, &jobs.Job{ID: "r1", Body: helloBody}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Store().Save(ctx, &jobs.Result{JobID: "r1", Status: jobs.StatusSucceeded, Response: json.RawMessage(`{"choices":[]}`), CompletedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	if err := insp.DeleteTask(env.Queue, "r1"); err != nil {
		t.Fatal(err)
	}
	for name, read := range map[string]func(context.Context, string) (*jobs.Result, error){"Result": p.Result, "Wait": p.Wait} {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := read(wctx, "r1")
		cancel()
		if err != nil || r.JobID != "r1" || r.Status != jobs.StatusSucceeded {
			t.Fatalf("%s = %+v, %v; want the stored result", name, r, err)
		}
	}
}

// A job deleted while Wait waits for it (a dead letter deleted, a batch
// cancelled) ends the wait with ErrNotFound.
func TestWaitEndsWhenItsJobIsDeleted(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.Enqueue(ctx, &jobs.Job{ID: "d1", Body: helloBody}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := p.Wait(ctx, "d1"); done <- err }()
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	if err := insp.DeleteTask(env.Queue, "d1"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, producer.ErrNotFound) || ctx.Err() != nil {
		t.Fatalf("Wait = %v, want ErrNotFound once the job is deleted", err)
	}
}

// A job whose task completed without a stored result (its result expired
// first, or a handler that is not llmq's ran it) ends Wait too.
func TestWaitEndsOnACompletedTaskWithoutResult(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := p.Enqueue(ctx, &jobs.Job{ID: "c1", Body: helloBody}); err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServer(env.Opt, asynq.Config{Queues: map[string]int{env.Queue: 1}, Concurrency: 1,
		TaskCheckInterval: 50 * time.Millisecond, LogLevel: asynq.FatalLevel})
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error { return nil })); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	_, err := p.Wait(ctx, "c1")
	if !errors.Is(err, producer.ErrNotFound) || ctx.Err() != nil {
		t.Fatalf("Wait = %v, want ErrNotFound for a completed task without a result", err)
	}
}

// A job whose task asynq archived (its handler failed for good) is not
// pending: without a stored result Result and Wait say ErrNotFound naming
// the state at once. (With a failure record stored — the worker's dead
// letters — Result and Wait return it, as for any stored result, whatever
// the task's state.)
func TestArchivedTaskIsNotPending(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, id := range []string{"a1", "a2"} {
		if _, err := p.Enqueue(ctx, &jobs.Job{ID: id, Body: helloBody}, producer.MaxAttempts(1)); err != nil {
			t.Fatal(err)
		}
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	for _, id := range []string{"a1", "a2"} {
		if err := insp.ArchiveTask(env.Queue, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Result(ctx, "a1"); !errors.Is(err, producer.ErrNotFound) || errors.Is(err, producer.ErrPending) || !strings.Contains(err.Error(), "archived") {
		t.Fatalf("Result of an archived task without a result = %v, want ErrNotFound naming the archived state", err)
	}
	if _, err := p.Wait(ctx, "a1"); !errors.Is(err, producer.ErrNotFound) || ctx.Err() != nil {
		t.Fatalf("Wait of an archived task without a result = %v, want ErrNotFound at once", err)
	}
	if _, err := p.Store().Save(ctx, &jobs.Result{JobID: "a2", Status: jobs.StatusFailed, Error: &jobs.ErrorInfo{Outcome: "dead_letter", Status: 400, Message: "bad"}, CompletedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := p.Result(ctx, "a2")
	if err != nil || r.Status != jobs.StatusFailed {
		t.Fatalf("Result of an archived task with its failure record = %+v, %v; want the failed result", r, err)
	}
	if r, err := p.Wait(ctx, "a2"); err != nil || r.Status != jobs.StatusFailed {
		t.Fatalf("Wait of an archived task with its failure record = %+v, %v; want the failed result", r, err)
	}
}

// countingOpt connects asynq and the producer through a client that counts
// its round trips to Redis (a command, or a pipeline).
type countingOpt struct {
	url   string
	trips *atomic.Int64
}

func (o countingOpt) MakeRedisClient() any {
	c, err := redisconn.Parse(o.url)
	if err != nil {
		panic(err)
	}
	rdb := c.NewClient()
	rdb.AddHook(tripHook{o.trips})
	return rdb
}

type tripHook struct{ n *atomic.Int64 }

func (h tripHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h tripHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h tripHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// Reading a job that has a result, or is pending in a queue the producer
// enqueued to, takes one round trip: what Wait repeats while it waits.
func TestLookupRoundTrips(t *testing.T) {
	env := llmqtest.Redis(t)
	var trips atomic.Int64
	p, err := producer.New(countingOpt{env.RedisURL(), &trips}, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	for _, id := range []string{"pending", "done"} {
		if _, err := p.Enqueue(ctx, &jobs.Job{ID: id, Body: helloBody}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Store().Save(ctx, &jobs.Result{JobID: "done", Status: jobs.StatusSucceeded, CompletedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id    string
		want  error
		trips int64
	}{
		{"pending", producer.ErrPending, 1},
		{"done", nil, 1},
		{"unknown", producer.ErrNotFound, 4}, // + every queue's list, their task states, the result again
	} {
		before := trips.Load()
		_, err := p.Result(ctx, tc.id)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Fatalf("Result(%s) = %v, want %v", tc.id, err, tc.want)
		}
		if n := trips.Load() - before; n > tc.trips {
			t.Errorf("Result(%s) took %d round trips, want at most %d", tc.id, n, tc.trips)
		}
	}
}
