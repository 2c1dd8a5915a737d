package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/ratelimit"
	"github.com/llmq/llmq/worker"
)

// arrival is one chat-completions request as the upstream received it.
type arrival struct {
	at     time.Time
	tokens int64 // what the provider charges: prompt estimate + max_tokens × n
}

// arrivals records every chat-completions request reaching the fake
// upstream, in front of its own handler.
type arrivals struct {
	est  *jobs.Estimator
	next http.Handler
	mu   sync.Mutex
	seen []arrival
}

func (a *arrivals) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/chat/completions") {
		at := time.Now()
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		var req jobs.Request
		if json.Unmarshal(b, &req) == nil {
			a.mu.Lock()
			a.seen = append(a.seen, arrival{at: at, tokens: int64(a.est.Estimate(&req).Total())})
			a.mu.Unlock()
		}
	}
	a.next.ServeHTTP(w, r)
}

// maxPerWindow returns the most requests and tokens that arrived within any
// window of length d.
func (a *arrivals) maxPerWindow(d time.Duration) (reqs, tokens int64) {
	a.mu.Lock()
	s := append([]arrival(nil), a.seen...)
	a.mu.Unlock()
	sort.Slice(s, func(i, j int) bool { return s[i].at.Before(s[j].at) })
	var sum int64
	j := 0
	for i := range s { // window [s[j].at, s[i].at]
		sum += s[i].tokens
		for s[i].at.Sub(s[j].at) >= d {
			sum -= s[j].tokens
			j++
		}
		reqs, tokens = max(reqs, int64(i-j+1)), max(tokens, sum)
	}
	return reqs, tokens
}

// budgetHarness is a harness whose fake upstream enforces budget itself and
// records every arrival.
func budgetHarness(t *testing.T, b ratelimit.Budget) (*harness, *arrivals) {
	t.Helper()
	h := newHarness(t, fakeupstream.Config{RPM: b.RPM, TPM: b.TPM, BurstRequests: b.BurstRequests, BurstTokens: b.BurstTokens})
	rec := &arrivals{est: jobs.NewEstimator(fakeupstream.DefaultCompletion), next: h.fake.Handler()}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	h.url = srv.URL + "/v1"
	return h, rec
}

// withBudget gives a test worker its own Limiter (on the worker's own Redis
// client, as a separate process would have) on the fleet budget b.
func withBudget(h *harness, b ratelimit.Budget, maxWait time.Duration) func(*worker.Config) {
	return func(c *worker.Config) {
		lim, err := ratelimit.New(c.Redis, ratelimit.Config{Prefix: h.env.Prefix, MaxWait: maxWait, Transit: 100 * time.Millisecond,
			Budgets: map[string]ratelimit.Budget{ratelimit.DefaultModel: b}})
		if err != nil {
			h.t.Fatal(err)
		}
		c.Limiter = lim
	}
}

// sizedBody is a request of about prompt tokens asking for maxTokens.
func sizedBody(i, words, maxTokens int) json.RawMessage {
	content := fmt.Sprintf("job %d: %s", i, strings.Repeat("lorem ", words))
	b, _ := json.Marshal(map[string]any{"model": "gpt-4o-mini", "max_tokens": maxTokens,
		"messages": []map[string]string{{"role": "user", "content": content}}})
	return b
}

// Two worker processes (separate Redis clients and Limiters), 8 handlers
// each, hammer one budget whose exact twin the fake upstream enforces: the
// upstream refuses nothing, and no 1 s window carries more than the bucket
// allows (burst + one second of refill).
func TestBudgetTwoWorkersNeverThrottled(t *testing.T) {
	t.Parallel()
	b := ratelimit.Budget{RPM: 600, TPM: 60_000, BurstRequests: 3, BurstTokens: 400}
	h, rec := budgetHarness(t, b)
	for range 2 {
		h.startWorker(workerOpts{mod: func(c *worker.Config) {
			c.Concurrency = 8
			withBudget(h, b, 5*time.Second)(c)
		}})
	}
	const n = 40
	ctx := context.Background()
	var sum int64
	for i := range n {
		job := &jobs.Job{ID: fmt.Sprintf("b%02d", i), Body: sizedBody(i, 5+(i*37)%60, 10+(i*53)%150)}
		req, _ := job.Request()
		sum += int64(jobs.NewEstimator(1024).Estimate(req).Total())
		if _, err := h.prod.Enqueue(ctx, job); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("every job to succeed", 30*time.Second, func() bool {
		done := 0
		for i := range n {
			if r, err := h.store.Get(ctx, fmt.Sprintf("b%02d", i)); err == nil && r.Status == jobs.StatusSucceeded {
				done++
			}
		}
		return done == n
	})
	st := h.fake.Stats()
	if st.Throttled != 0 || st.RateLimited != 0 {
		t.Errorf("upstream answered %d 429s (%d from its own RPM/TPM): the fleet exceeded the budget", st.RateLimited, st.Throttled)
	}
	if st.Requests != n {
		t.Errorf("upstream saw %d requests for %d jobs", st.Requests, n)
	}
	reqs, toks := rec.maxPerWindow(time.Second)
	maxReqs, maxToks := b.BurstRequests+b.RPM/60, b.BurstTokens+b.TPM/60
	t.Logf("%d jobs, %d tokens; busiest 1 s window: %d requests (bucket allows %d), %d tokens (allows %d)", n, sum, reqs, maxReqs, toks, maxToks)
	if reqs > maxReqs || toks > maxToks {
		t.Errorf("a 1 s window carried %d requests and %d tokens; the budget allows %d and %d", reqs, toks, maxReqs, maxToks)
	}
}

// A job whose cost exceeds the token bucket's whole capacity can never run:
// it is dead-lettered at once with a reason that says so, and the upstream
// is never called.
func TestBudgetJobLargerThanBudgetIsDeadLettered(t *testing.T) {
	t.Parallel()
	b := ratelimit.Budget{RPM: 600, TPM: 6000}
	h, _ := budgetHarness(t, b)
	h.startWorker(workerOpts{mod: withBudget(h, b, 5*time.Second)})
	if _, err := h.prod.Enqueue(context.Background(), &jobs.Job{ID: "huge", Body: sizedBody(0, 3, 7000)}); err != nil {
		t.Fatal(err)
	}
	info := h.waitState("huge", asynq.TaskStateArchived)
	if !strings.Contains(info.LastErr, "exceeds the budget's capacity") || !strings.Contains(info.LastErr, "lower max_tokens or raise the burst") {
		t.Errorf("archived reason %q, want it to say the cost exceeds the budget and what to do", info.LastErr)
	}
	r := h.result("huge")
	if r.Status != jobs.StatusFailed || r.Error == nil || r.Error.Type != "too_large" {
		t.Errorf("stored result %+v / %+v, want a failure of type too_large", r, r.Error)
	}
	if n := h.fake.Stats().Requests; n != 0 {
		t.Errorf("upstream saw %d requests, want none", n)
	}
}

// A wait longer than MaxWait snoozes the job until the budget has room,
// without burning an attempt.
func TestBudgetLongWaitSnoozesWithoutBurningAttempt(t *testing.T) {
	t.Parallel()
	b := ratelimit.Budget{RPM: 60, BurstRequests: 1} // one request a second
	h, _ := budgetHarness(t, b)
	h.startWorker(workerOpts{mod: withBudget(h, b, 100*time.Millisecond)})
	for _, id := range []string{"s1", "s2", "s3"} {
		h.enqueue(id, producer.MaxAttempts(1))
	}
	snoozed := 0
	for _, id := range []string{"s1", "s2", "s3"} {
		r := h.result(id)
		if r.Status != jobs.StatusSucceeded || r.Attempts != 1 {
			t.Errorf("%s: result %+v, want success on attempt 1 of 1", id, r)
		}
		info := h.waitState(id, asynq.TaskStateCompleted)
		if info.Retried != 0 {
			t.Errorf("%s: asynq retried = %d; budget waits must not count", id, info.Retried)
		}
		if strings.HasPrefix(info.LastErr, "budget: waiting for gpt-4o-mini budget") {
			snoozed++
		}
	}
	if snoozed == 0 {
		t.Errorf("no job was snoozed for the budget; the test did not exercise the long wait")
	}
	if st := h.fake.Stats(); st.RateLimited != 0 || st.Requests != 3 {
		t.Errorf("upstream saw %d requests and %d 429s, want 3 and none", st.Requests, st.RateLimited)
	}
}

// A 429 with Retry-After cools the whole fleet down: no worker calls the
// upstream for that model before the cooldown ends.
func TestBudget429CoolsDownTheFleet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Faults: "ratelimit:1500ms"})
	b := ratelimit.Budget{RPM: 6000}
	var lims []*ratelimit.Limiter
	var recs []*recorder
	for range 2 {
		recs = append(recs, h.startWorker(workerOpts{mod: func(c *worker.Config) {
			withBudget(h, b, 5*time.Second)(c)
			lims = append(lims, c.Limiter)
		}}))
	}
	ctx := context.Background()
	h.enqueue("first")
	var until time.Time
	h.waitFor("the 429 to set a fleet cooldown", 10*time.Second, func() bool {
		s, err := lims[0].Usage(ctx, "gpt-4o-mini")
		until = s.CooldownUntil
		return err == nil && !until.IsZero()
	})
	for i := range 6 {
		h.enqueue(fmt.Sprintf("after%d", i))
	}
	for i := range 6 {
		if r := h.result(fmt.Sprintf("after%d", i)); r.Status != jobs.StatusSucceeded {
			t.Fatalf("after%d: %+v", i, r)
		}
	}
	if r := h.result("first"); r.Status != jobs.StatusSucceeded || r.Attempts != 1 {
		t.Errorf("first: %+v, want success on attempt 1 (a 429 burns none)", r)
	}
	// The first call is the 429; every later one, from either worker, must
	// wait for the cooldown.
	var calls []time.Time
	for _, rec := range recs {
		calls = append(calls, rec.times()...)
	}
	sort.Slice(calls, func(i, j int) bool { return calls[i].Before(calls[j]) })
	for _, at := range calls[1:] {
		if at.Before(until) {
			t.Errorf("a worker called the upstream at %s, during the fleet cooldown until %s", at.Format("15:04:05.000"), until.Format("15:04:05.000"))
		}
	}
	if st := h.fake.Stats(); st.Requests != 8 || st.RateLimited != 1 {
		t.Errorf("upstream saw %d requests and %d 429s, want 8 and 1", st.Requests, st.RateLimited)
	}
}

// After a call the budget learns what it really cost: with RefundUnused the
// tokens reserved beyond the reported usage come back; without (OpenAI's
// way, the default) they stay spent.
func TestBudgetReconcileRefund(t *testing.T) {
	t.Parallel()
	for _, refund := range []bool{false, true} {
		t.Run(fmt.Sprintf("refund_unused=%v", refund), func(t *testing.T) {
			t.Parallel()
			b := ratelimit.Budget{TPM: 600, BurstTokens: 3000} // refills 10 tokens a second
			h := newHarness(t, fakeupstream.Config{})
			var lim *ratelimit.Limiter
			h.startWorker(workerOpts{mod: func(c *worker.Config) {
				var err error
				lim, err = ratelimit.New(c.Redis, ratelimit.Config{Prefix: h.env.Prefix, RefundUnused: refund,
					Budgets: map[string]ratelimit.Budget{ratelimit.DefaultModel: b}})
				if err != nil {
					t.Fatal(err)
				}
				c.Limiter = lim
			}})
			if _, err := h.prod.Enqueue(context.Background(), &jobs.Job{ID: "r", Body: sizedBody(0, 3, 2000)}); err != nil {
				t.Fatal(err)
			}
			res := h.result("r")
			if res.Status != jobs.StatusSucceeded || res.Usage == nil {
				t.Fatalf("result %+v", res)
			}
			s, err := lim.Usage(context.Background(), "gpt-4o-mini")
			if err != nil {
				t.Fatal(err)
			}
			used := 3000 - s.Tokens
			if refund && used > float64(res.Usage.TotalTokens) {
				t.Errorf("budget spent %.0f tokens, want at most the %d used", used, res.Usage.TotalTokens)
			}
			if !refund && used < 1900 {
				t.Errorf("budget spent %.0f tokens, want the ~2000 reserved (max_tokens) kept", used)
			}
		})
	}
}

// When the provider's x-ratelimit-remaining-tokens is below what the budget
// holds, the fleet's budget adopts it.
func TestBudgetAdoptsStricterServerView(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{TPM: 6000}) // the provider allows far less
	b := ratelimit.Budget{TPM: 600_000}
	var lim *ratelimit.Limiter
	h.startWorker(workerOpts{mod: func(c *worker.Config) {
		withBudget(h, b, 5*time.Second)(c)
		lim = c.Limiter
	}})
	h.enqueue("v")
	if r := h.result("v"); r.Status != jobs.StatusSucceeded {
		t.Fatalf("result %+v", r)
	}
	s, err := lim.Usage(context.Background(), "gpt-4o-mini")
	if err != nil {
		t.Fatal(err)
	}
	// Adopted ~5,970 and refilled at 10,000 a second since: far below the
	// ~599,000 the budget alone would hold.
	if s.Tokens > 100_000 {
		t.Errorf("budget holds %.0f tokens after the provider said ~5970 remain", s.Tokens)
	}
}
