package worker_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/results"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "503,503,200"})
	rec := h.startWorker(workerOpts{})
	h.enqueue("j")
	r := h.result("j")
	if r.Status != jobs.StatusSucceeded || r.Attempts != 3 || r.ServedBy != jobs.ServedByPrimary {
		t.Fatalf("result %+v, want success on attempt 3 from the primary", r)
	}
	info := h.waitState("j", asynq.TaskStateCompleted)
	if info.Retried != 2 {
		t.Errorf("asynq retried = %d, want 2", info.Retried)
	}
	// The record is on the asynq task too (written in the save's round
	// trip), for asynqmon.
	var onTask jobs.Result
	if err := json.Unmarshal(info.Result, &onTask); err != nil || onTask.JobID != "j" || onTask.Status != jobs.StatusSucceeded || onTask.Attempts != 3 {
		t.Errorf("asynq task result %s (%v), want the stored success record", info.Result, err)
	}
	if n := h.fake.Stats().Requests; n != 3 {
		t.Errorf("upstream saw %d requests, want 3", n)
	}
	// Full jitter: the n-th retry waits at most min(cap, base·2^n), rounded
	// up to asynq's whole-second clock, then at most one poll interval.
	calls := rec.times()
	for n, bound := range []time.Duration{20 * time.Millisecond, 40 * time.Millisecond} {
		gap := calls[n+1].Sub(calls[n])
		if limit := bound + time.Second + 50*time.Millisecond + 2*time.Second; gap > limit {
			t.Errorf("retry %d came %v after the previous call; full jitter bound %v (+1 s rounding, +poll, +2 s slack for a loaded machine) = %v", n+1, gap, bound, limit)
		}
	}
}

func TestBadRequestIsDeadLetteredAfterOneCall(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "400"})
	h.startWorker(workerOpts{})
	h.enqueue("bad")
	info := h.waitState("bad", asynq.TaskStateArchived)
	want := "dead_letter: upstream 400 invalid_request_error"
	if !strings.HasPrefix(info.LastErr, want) || !strings.Contains(info.LastErr, "param messages[0].content") {
		t.Errorf("archived reason %q, want it to start %q and name the param", info.LastErr, want)
	}
	if n := h.fake.Stats().Requests; n != 1 {
		t.Errorf("upstream saw %d requests, want exactly 1", n)
	}
	r := h.result("bad")
	if r.Status != jobs.StatusFailed || r.Error == nil || r.Error.Status != 400 || r.Error.Type != "invalid_request_error" || r.StatusCode != 400 {
		t.Errorf("stored failure %+v / %+v, want status 400 invalid_request_error", r, r.Error)
	}
}

func TestRateLimitedBurnsNoAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "ratelimit:1200ms,ratelimit:1200ms,ratelimit:1200ms,200"})
	rec := h.startWorker(workerOpts{})
	// One attempt only: asynq checks Retried >= MaxRetry before IsFailure,
	// so this passes only because the producer keeps a retry margin and the
	// 429s do not increment Retried.
	h.enqueue("rl", producer.MaxAttempts(1))
	r := h.result("rl")
	if r.Status != jobs.StatusSucceeded {
		t.Fatalf("result %+v: three 429s must not exhaust a single attempt", r)
	}
	info := h.waitState("rl", asynq.TaskStateCompleted)
	if info.Retried != 0 || r.Attempts != 1 {
		t.Errorf("asynq retried = %d, attempts = %d; 429s must not count", info.Retried, r.Attempts)
	}
	calls := rec.times()
	if len(calls) != 4 {
		t.Fatalf("%d calls, want 4", len(calls))
	}
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < 1200*time.Millisecond {
			t.Errorf("call %d came %v after a 429 with retry-after-ms 1200", i+1, gap)
		}
	}
}

func TestAttemptsExhaustedKeepsLastError(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "500x10"})
	h.startWorker(workerOpts{})
	h.enqueue("ex", producer.MaxAttempts(3))
	info := h.waitState("ex", asynq.TaskStateArchived)
	if !strings.HasPrefix(info.LastErr, "dead_letter: attempts exhausted (3 of 3): upstream 500") {
		t.Errorf("archived reason %q", info.LastErr)
	}
	if n := h.fake.Stats().Requests; n != 3 {
		t.Errorf("upstream saw %d requests, want 3", n)
	}
	r := h.result("ex")
	if r.Status != jobs.StatusFailed || r.Error.Status != 500 || r.Attempts != 3 {
		t.Errorf("stored failure %+v %+v", r, r.Error)
	}
}

func TestTransportFailuresAreRetried(t *testing.T) {
	t.Parallel()
	for _, fault := range []string{"hang", "reset", "malformed", "truncated"} {
		t.Run(fault, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, fakeupstream.Config{Faults: fault + ",200"})
			h.startWorker(workerOpts{headerWait: 300 * time.Millisecond})
			h.enqueue("tr")
			r := h.result("tr")
			if r.Status != jobs.StatusSucceeded || r.Attempts != 2 {
				t.Fatalf("result %+v, want success on attempt 2 after %s", r, fault)
			}
			if n := h.fake.Stats().Requests; n != 2 {
				t.Errorf("upstream saw %d requests, want 2", n)
			}
		})
	}
}

func TestUndecodablePayloadIsDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	h.startWorker(workerOpts{})
	c := asynq.NewClient(h.env.Opt)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask(jobs.TaskType, []byte("\xff{not json")), asynq.Queue(h.env.Queue), asynq.TaskID("poison"), asynq.MaxRetry(5)); err != nil {
		t.Fatal(err)
	}
	info := h.waitState("poison", asynq.TaskStateArchived)
	if !strings.HasPrefix(info.LastErr, "dead_letter: undecodable payload") || info.Retried != 0 {
		t.Errorf("archived %q after %d retries", info.LastErr, info.Retried)
	}
	if n := h.fake.Stats().Requests; n != 0 {
		t.Errorf("upstream saw %d requests for a poison payload", n)
	}
}

func TestFallbackToNextModel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	if err := h.fake.SetModelFaults("gpt-4o-mini", "notfoundx100"); err != nil {
		t.Fatal(err)
	}
	h.startWorker(workerOpts{})
	job := &jobs.Job{ID: "fb", Fallback: []string{"gpt-4.1-mini"}, Body: body("hi")}
	if _, err := h.prod.Enqueue(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	r := h.result("fb")
	if r.Status != jobs.StatusSucceeded || r.ServedBy != "fallback:gpt-4.1-mini" || r.Model != "gpt-4.1-mini" || r.Attempts != 1 {
		t.Fatalf("result %+v, want served by fallback:gpt-4.1-mini on attempt 1", r)
	}
	// Without a tier, model_not_found is a dead letter.
	h.enqueue("nofb")
	info := h.waitState("nofb", asynq.TaskStateArchived)
	if !strings.Contains(info.LastErr, "model_not_found") {
		t.Errorf("archived reason %q", info.LastErr)
	}
}

func TestBadKeyHoldsFleetUntilKeyChanges(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{APIKey: "sk-test-good"})
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("sk-test-revoked\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Two workers, each its own key source and Redis connection.
	h.startWorker(workerOpts{keys: upstream.FileKey(keyFile)})
	h.startWorker(workerOpts{keys: upstream.FileKey(keyFile)})
	const n = 20
	for i := 0; i < n; i++ {
		h.enqueue("k" + string(rune('a'+i)))
	}
	holds := hold.NewStore(h.env.Client, h.env.Prefix)
	h.waitFor("the fleet to hold", 10*time.Second, func() bool {
		st, _ := holds.Get(context.Background(), "default")
		return st != nil && st.Class == "auth"
	})
	// Rewrite the key file with a good key (a new mtime and size).
	if err := os.WriteFile(keyFile, []byte("sk-test-good\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		r := h.result("k" + string(rune('a'+i)))
		if r.Status != jobs.StatusSucceeded || r.Attempts != 1 {
			t.Errorf("job %s: %+v, want success with no attempt burned", r.JobID, r)
		}
	}
	insp := asynq.NewInspector(h.env.Opt)
	defer insp.Close()
	if qi, err := insp.GetQueueInfo(h.env.Queue); err != nil || qi.Archived != 0 {
		t.Fatalf("archived = %v (%v): a bad key must never dead-letter a job", qi.Archived, err)
	}
	// At most the calls in flight when the hold was raised got a 401: two
	// workers × concurrency 4, each refreshing the key once.
	if got := h.fake.Stats().ByStatus["401"]; got > 16 {
		t.Errorf("%d calls answered 401: the fleet kept calling with a revoked key", got)
	}
	if st, _ := holds.Get(context.Background(), "default"); st != nil {
		t.Errorf("hold still set after the key changed: %+v", st)
	}
}

func TestQuotaHoldStopsCallsUntilResume(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "quotax100000"})
	h.startWorker(workerOpts{})
	for i := 0; i < 10; i++ {
		h.enqueue("q" + string(rune('a'+i)))
	}
	holds := hold.NewStore(h.env.Client, h.env.Prefix)
	h.waitFor("the fleet to hold", 10*time.Second, func() bool {
		st, _ := holds.Get(context.Background(), "default")
		return st != nil && st.Class == "quota"
	})
	// Once the calls in flight when the hold was raised have been answered,
	// observe a deliberate window of several hold rechecks (200 ms each):
	// the upstream must see no call at all.
	h.waitFor("in-flight calls to be answered", 10*time.Second, func() bool { return h.fake.Stats().InFlight == 0 })
	before := h.fake.Stats().Requests
	time.Sleep(1500 * time.Millisecond)
	// A handler that passed the hold gate just before the hold was raised
	// may still make its one call; the worker's concurrency (4) bounds all
	// calls made from the first 429 to the end of the window.
	if after := h.fake.Stats().Requests; after > 4 {
		t.Fatalf("upstream saw %d calls (%d during the hold window); at most the 4 in flight expected: a call storm", after, after-before)
	}
	// The operator fixes billing and runs `llmq resume`.
	if err := h.fake.SetFaults(""); err != nil {
		t.Fatal(err)
	}
	if _, err := holds.Clear(context.Background(), "default"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if r := h.result("q" + string(rune('a'+i))); r.Status != jobs.StatusSucceeded || r.Attempts != 1 {
			t.Errorf("job %s: %+v", r.JobID, r)
		}
	}
}

func TestDeadlineStopsRetries(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "500x100"})
	h.startWorker(workerOpts{mod: func(c *worker.Config) {
		p := testPolicy()
		p.Base, p.Cap = time.Second, 10*time.Second
		c.Policy = p
	}})
	h.enqueue("dl", producer.Deadline(time.Now().Add(300*time.Millisecond)), producer.MaxAttempts(50))
	info := h.waitState("dl", asynq.TaskStateArchived)
	if !strings.Contains(info.LastErr, "deadline") {
		t.Errorf("archived reason %q, want it to name the deadline", info.LastErr)
	}
}

// A job's deadline bounds its upstream call: a hanging upstream cannot hold
// the job past it (the response-header and call timeouts here are far
// longer than the test's wait).
func TestJobDeadlineBoundsTheCall(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "hangx10"})
	h.startWorker(workerOpts{headerWait: time.Minute, mod: func(c *worker.Config) { c.CallTimeout = time.Minute }})
	h.enqueue("dlc", producer.Deadline(time.Now().Add(500*time.Millisecond)))
	info := h.waitState("dlc", asynq.TaskStateArchived)
	if !strings.Contains(info.LastErr, "deadline") {
		t.Errorf("archived reason %q, want it to name the deadline", info.LastErr)
	}
	r := h.result("dlc")
	if r.Status != jobs.StatusFailed || r.Error == nil {
		t.Errorf("stored %+v", r)
	}
}

// Tasks the worker cannot run are dead-lettered at once, and a job asynq
// archives on its own (its retry count spent) still gets a failed result.
func TestForeignAndExhaustedTasksGetDeadLettered(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "500x10"})
	h.startWorker(workerOpts{})
	c := asynq.NewClient(h.env.Opt)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("email:send", []byte(`{}`)), asynq.Queue(h.env.Queue), asynq.TaskID("foreign"), asynq.MaxRetry(25)); err != nil {
		t.Fatal(err)
	}
	info := h.waitState("foreign", asynq.TaskStateArchived)
	if info.Retried != 0 || !strings.Contains(info.LastErr, `unknown task type "email:send"`) {
		t.Errorf("foreign task archived after %d retries with %q", info.Retried, info.LastErr)
	}
	// A job enqueued without the producer's retry margin: asynq archives it
	// after the first failure, before the worker's attempt accounting would.
	job := &jobs.Job{ID: "raw", BatchID: "rawb", Body: body("x")}
	payload, err := job.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.AddToBatch(context.Background(), "rawb", []results.BatchEntry{{JobID: "raw", Line: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enqueue(asynq.NewTask(jobs.TaskType, payload), asynq.Queue(h.env.Queue), asynq.TaskID("raw"), asynq.MaxRetry(0)); err != nil {
		t.Fatal(err)
	}
	h.waitState("raw", asynq.TaskStateArchived)
	r := h.result("raw")
	if r.Status != jobs.StatusFailed || r.Error == nil || !strings.Contains(r.Error.Message, "asynq retries exhausted") || r.Error.Status != 500 {
		t.Errorf("stored %+v %+v, want the failure with its last upstream error", r, r.Error)
	}
	if st, err := h.prod.Batch(context.Background(), "rawb"); err != nil || !st.Done() || st.Failed != 1 {
		t.Errorf("batch %+v %v, want it finished with 1 failed", st, err)
	}
}

// gated is a Completer whose first call returns only when the test says so.
type gated struct {
	next    worker.Completer
	release chan struct{}
	once    sync.Once
}

func (g *gated) Chat(ctx context.Context, body []byte) (*upstream.Response, error) {
	resp, err := g.next.Chat(ctx, body)
	first := false
	g.once.Do(func() { first = true })
	if first {
		<-g.release
	}
	return resp, err
}

// A 401 that comes back after the key was already replaced (another job
// re-read the file meanwhile) speaks of the old key: the worker retries
// with the new one instead of holding the fleet against a good key.
func TestLate401DoesNotHoldTheNewKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{APIKey: "sk-test-good"})
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("sk-test-revoked\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := upstream.FileKey(keyFile)
	client, err := upstream.New(upstream.Config{BaseURL: h.url, Key: keys})
	if err != nil {
		t.Fatal(err)
	}
	g := &gated{next: client, release: make(chan struct{})}
	h.startWorker(workerOpts{keys: keys, mod: func(c *worker.Config) { c.Upstream = g }})
	h.enqueue("late")
	h.waitFor("the first call to be answered 401", 10*time.Second, func() bool { return h.fake.Stats().ByStatus["401"] == 1 })
	if err := os.WriteFile(keyFile, []byte("sk-test-good\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Key(); err != nil { // another job re-reads the file
		t.Fatal(err)
	}
	close(g.release)
	if r := h.result("late"); r.Status != jobs.StatusSucceeded {
		t.Fatalf("result %+v", r)
	}
	if st, _ := hold.NewStore(h.env.Client, h.env.Prefix).Get(context.Background(), "default"); st != nil {
		t.Errorf("a hold stands against the new key: %+v", st)
	}
}

// A job whose id already has a stored success is never paid again: the
// gate reads the result before any call, whatever the task's retry count —
// for the same explicit id enqueued again once asynq's retention deleted
// the first task, and for a task that finds its result already stored (a
// redelivery's state: the worker died between storing and telling asynq;
// the kill -9 drill makes real ones). The stored result stands and the
// task completes.
func TestStoredSuccessIsNeverPaidAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	h.startWorker(workerOpts{})
	ctx := context.Background()
	h.enqueue("first")
	first := h.result("first")
	h.waitState("first", asynq.TaskStateCompleted)
	if n := h.fake.Stats().Requests; n != 1 {
		t.Fatalf("upstream saw %d requests for the first run, want 1", n)
	}
	// Retention over: asynq deletes the completed task; the result lives on.
	insp := asynq.NewInspector(h.env.Opt)
	defer insp.Close()
	if err := insp.DeleteTask(h.env.Queue, "first"); err != nil {
		t.Fatal(err)
	}
	h.enqueue("first")
	// As a redelivery finds it: the result stored, the task not completed.
	if _, err := h.prod.Store().Save(ctx, &jobs.Result{JobID: "redelivered", Status: jobs.StatusSucceeded,
		Response: json.RawMessage(`{"choices":[]}`), CompletedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	h.enqueue("redelivered")
	for _, id := range []string{"first", "redelivered"} {
		h.waitState(id, asynq.TaskStateCompleted)
	}
	if n := h.fake.Stats().Requests; n != 1 {
		t.Errorf("upstream saw %d requests in all, want 1: a stored success was paid again", n)
	}
	if r := h.result("first"); r.CompletedAt != first.CompletedAt || r.RequestID != first.RequestID {
		t.Errorf("the first run's result was replaced: %+v, want %+v", r, first)
	}
}
