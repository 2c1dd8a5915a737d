package worker_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/worker"
)

const (
	modelA = "gpt-4o-mini"  // every test job's primary model (see body)
	modelB = "gpt-4.1-mini" // its fallback
)

func (h *harness) enqueueJob(j *jobs.Job, opts ...producer.EnqueueOption) {
	h.t.Helper()
	if _, err := h.prod.Enqueue(context.Background(), j, opts...); err != nil {
		h.t.Fatal(err)
	}
}

// tripBreaker opens model's breaker the way another process would: five
// counted failures recorded through its own Breaker.
func (h *harness) tripBreaker(model string, open time.Duration) {
	h.t.Helper()
	b, err := breaker.New(h.env.Client, breaker.Config{Prefix: h.env.Prefix, Open: open})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < breaker.DefaultFailures; i++ {
		p, err := b.Allow(ctx, model)
		if err == nil {
			err = b.Record(ctx, p, breaker.Failure)
		}
		if err != nil {
			h.t.Fatal(err)
		}
	}
	if st, _ := b.Status(ctx, model); st.State != breaker.Open {
		h.t.Fatalf("breaker of %s: %+v, want open", model, st)
	}
}

// A model's configured fallbacks serve a job that names none, on 404
// model_not_found, and the export line keeps served_by.
func TestConfiguredFallbackOnModelNotFound(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	if err := h.fake.SetModelFaults(modelA, "notfoundx100"); err != nil {
		t.Fatal(err)
	}
	h.startWorker(workerOpts{mod: func(c *worker.Config) { c.Fallbacks = map[string][]string{modelA: {modelB}} }})
	h.enqueue("cfb")
	r := h.result("cfb")
	if r.Status != jobs.StatusSucceeded || r.ServedBy != "fallback:"+modelB || r.Model != modelB || r.Attempts != 1 {
		t.Fatalf("result %+v, want served by fallback:%s on attempt 1", r, modelB)
	}
	if line := r.OutputLine(); line.ServedBy != "fallback:"+modelB || line.Response == nil || line.Response.StatusCode != 200 {
		t.Errorf("export line %+v lost served_by or the response", line)
	}
}

// An open breaker sends jobs to their fallback tier without calling the
// primary; a job with nowhere else to go waits without burning an attempt.
func TestOpenBreakerFallsBackOrWaits(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	h.tripBreaker(modelA, time.Minute)
	h.startWorker(workerOpts{})
	h.enqueueJob(&jobs.Job{ID: "fb", Fallback: []string{modelB}, Body: body("hi")})
	r := h.result("fb")
	if r.Status != jobs.StatusSucceeded || r.ServedBy != "fallback:"+modelB || r.Attempts != 1 {
		t.Fatalf("result %+v, want served by fallback:%s", r, modelB)
	}
	h.enqueue("stuck")
	info := h.waitState("stuck", asynq.TaskStateRetry)
	if info.Retried != 0 || !strings.Contains(info.LastErr, "breaker") {
		t.Errorf("waiting job: retried %d, last error %q; want a snooze naming the breaker", info.Retried, info.LastErr)
	}
	if d := time.Until(info.NextProcessAt); d < 50*time.Second {
		t.Errorf("waiting job comes back in %v, want at the breaker's half-open time (about 1 min)", d)
	}
	if st := h.fake.Stats(); st.ByModel[modelA] != 0 || st.Requests != 1 {
		t.Errorf("upstream saw %v (%d requests): the open breaker let calls to %s through", st.ByModel, st.Requests, modelA)
	}
}

// When both models are down, a job that allows cached responses gets the
// response an earlier identical request received; one that misses the cache
// and allows static text gets the static text.
func TestCacheThenStaticWhenModelsAreDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	const static = "The assistant is unavailable; please try again later."
	h.startWorker(workerOpts{mod: func(c *worker.Config) { c.StaticResponse = static }})
	h.enqueueJob(&jobs.Job{ID: "warm", AllowCached: true, Body: body("what is 2+2?")})
	warm := h.result("warm")
	if warm.Status != jobs.StatusSucceeded || warm.ServedBy != jobs.ServedByPrimary {
		t.Fatalf("warm-up %+v", warm)
	}
	for _, m := range []string{modelA, modelB} {
		if err := h.fake.SetModelFaults(m, "503x1000"); err != nil {
			t.Fatal(err)
		}
	}
	// A different parameter order and a user field: the same request.
	same := json.RawMessage(`{"user":"u1","max_tokens":16,"messages":[{"role":"user","content":"what is 2+2?"}],"model":"gpt-4o-mini"}`)
	h.enqueueJob(&jobs.Job{ID: "hit", AllowCached: true, Fallback: []string{modelB}, Body: same})
	hit := h.result("hit")
	if hit.Status != jobs.StatusSucceeded || hit.ServedBy != jobs.ServedByCache || string(hit.Response) != string(warm.Response) || hit.Attempts != 1 {
		t.Fatalf("result %+v, want the warm-up's response served by cache", hit)
	}
	h.enqueueJob(&jobs.Job{ID: "static", AllowCached: true, AllowStatic: true, Fallback: []string{modelB}, Body: body("never asked before")})
	st := h.result("static")
	var c struct {
		Object  string
		Model   string
		Choices []struct {
			Message struct{ Role, Content string }
		}
	}
	if err := json.Unmarshal(st.Response, &c); err != nil || st.Status != jobs.StatusSucceeded || st.ServedBy != jobs.ServedByStatic ||
		c.Object != "chat.completion" || c.Model != modelA || len(c.Choices) != 1 || c.Choices[0].Message.Content != static {
		t.Fatalf("result %+v (%v), want the static text as a chat.completion", st, err)
	}
	if line := st.OutputLine(); line.ServedBy != jobs.ServedByStatic || line.Error != nil {
		t.Errorf("export line %+v", line)
	}
	// Each down job tried both models once; nothing was retried.
	if got := h.fake.Stats().ByStatus["503"]; got != 4 {
		t.Errorf("upstream answered %d 503s, want 4 (two jobs × two models)", got)
	}
}

// With no tier, no cache and no static text, a job whose model's breaker
// is open waits: it is neither lost nor dead-lettered, failed probes burn
// none of its attempts, and it completes once the upstream recovers.
func TestNothingAllowedWaitsForRecovery(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	if err := h.fake.SetModelFaults(modelA, "503x100000"); err != nil {
		t.Fatal(err)
	}
	h.startWorker(workerOpts{mod: func(c *worker.Config) {
		c.Breaker = breaker.Config{Failures: 2, Open: 500 * time.Millisecond}
	}})
	h.enqueue("w", producer.MaxAttempts(3))
	// Two failures trip the breaker (two attempts burned); then two probes
	// fail while the job waits.
	h.waitFor("two failed probes", 20*time.Second, func() bool { return h.fake.Stats().Requests >= 4 })
	if info := h.taskInfo("w"); info.State == asynq.TaskStateArchived || info.Retried > 2 {
		t.Fatalf("during the outage the job is %s with %d retries: it must wait, not fail", info.State, info.Retried)
	}
	if err := h.fake.SetModelFaults(modelA, ""); err != nil {
		t.Fatal(err)
	}
	r := h.result("w")
	if r.Status != jobs.StatusSucceeded || r.Attempts != 3 || r.ServedBy != jobs.ServedByPrimary {
		t.Fatalf("result %+v, want success on attempt 3 (2 burned tripping the breaker, none by probes)", r)
	}
	if info := h.waitState("w", asynq.TaskStateCompleted); info.Retried != 2 {
		t.Errorf("asynq retried %d, want 2", info.Retried)
	}
}

// Of two worker processes, exactly one call probes the upstream per
// half-open period: counted at the fake upstream, which never has more than
// one call in flight while the breaker is open, and sees one hung call per
// failed probe.
func TestOneProbeFleetWide(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	if err := h.fake.SetModelFaults(modelA, "503,hangx100000"); err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		probes int
	)
	mod := func(c *worker.Config) {
		c.Breaker = breaker.Config{Failures: 1, Open: 500 * time.Millisecond, OnTransition: func(_ string, from, to breaker.State) {
			if to == breaker.HalfOpen {
				mu.Lock()
				probes++
				mu.Unlock()
			}
		}}
	}
	h.startWorker(workerOpts{headerWait: 300 * time.Millisecond, mod: mod})
	h.startWorker(workerOpts{headerWait: 300 * time.Millisecond, mod: mod})
	h.enqueue("trip")
	watch, err := breaker.New(h.env.Client, breaker.Config{Prefix: h.env.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	h.waitFor("the 503 to trip the breaker", 10*time.Second, func() bool {
		st, err := watch.Status(context.Background(), modelA)
		return err == nil && st.State == breaker.Open
	})
	const n = 12
	for i := 0; i < n; i++ {
		h.enqueue("j" + string(rune('a'+i)))
	}
	h.waitFor("three failed probes", 20*time.Second, func() bool { return h.fake.Stats().ByFault["hang"] >= 3 })
	during := h.fake.Stats()
	if err := h.fake.SetModelFaults(modelA, ""); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if r := h.result("j" + string(rune('a'+i))); r.Status != jobs.StatusSucceeded {
			t.Errorf("job %s: %+v", r.JobID, r)
		}
	}
	h.result("trip")
	if during.MaxInFlight != 1 {
		t.Errorf("the upstream had %d calls in flight at once while the breaker was open, want 1 (one probe at a time)", during.MaxInFlight)
	}
	mu.Lock()
	defer mu.Unlock()
	// Every half-open period had one probe: the hung ones, the one in
	// flight or failing when faults were lifted, and the one that closed it.
	if hangs := h.fake.Stats().ByFault["hang"]; int64(probes) < hangs || int64(probes) > hangs+2 {
		t.Errorf("%d half-open periods but %d hung probes at the upstream", probes, hangs)
	}
	if got, want := h.fake.Stats().ByStatus["200"], int64(n+1); got != want {
		t.Errorf("%d successful calls, want %d (one per job)", got, want)
	}
}

// A job that always fails cannot keep a model's breaker probing forever:
// its free failed probes are bounded by its attempts, then its probes burn
// attempts and it is dead-lettered.
func TestFailedProbesAreBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{})
	if err := h.fake.SetModelFaults(modelA, "500x100000"); err != nil {
		t.Fatal(err)
	}
	h.startWorker(workerOpts{mod: func(c *worker.Config) {
		c.Breaker = breaker.Config{Failures: 1, Open: 300 * time.Millisecond}
	}})
	h.enqueue("lone", producer.MaxAttempts(2))
	info := h.waitState("lone", asynq.TaskStateArchived)
	if !strings.Contains(info.LastErr, "attempts exhausted (2 of 2)") {
		t.Errorf("archived reason %q", info.LastErr)
	}
	// 1 call trips the breaker (attempt 1), 2 free failed probes, 1 probe
	// that burns attempt 2.
	if got := h.fake.Stats().Requests; got != 4 {
		t.Errorf("upstream saw %d calls, want 4", got)
	}
}
