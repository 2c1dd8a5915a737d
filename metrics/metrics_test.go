package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/ratelimit"
)

// value returns the value of the series name{labels}, and whether it exists.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func want(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string, v float64) {
	t.Helper()
	got, ok := value(t, reg, name, labels)
	if !ok {
		t.Fatalf("%s%v: no such series", name, labels)
	}
	if got != v {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, v)
	}
}

type L = map[string]string

func TestNilMetricsRecordsNothingAndDoesNotPanic(t *testing.T) {
	var m *metrics.Metrics
	m.UpstreamCall("gpt-4o", 200, "ok", "ok", time.Second)
	m.Tokens("gpt-4o", metrics.TokensPrompt, 5)
	m.BudgetWait("gpt-4o", time.Second)
	m.RateLimited("gpt-4o")
	m.HoldActive("a", "auth")
	m.HoldLifted("a")
	m.HoldPlaced("a", "quota")
	m.BreakerState("gpt-4o", metrics.BreakerOpen)
	m.BreakerTransition("gpt-4o", metrics.BreakerClosed, metrics.BreakerOpen)
	m.Job(metrics.JobRetry)
	m.DeadLetter("invalid_request")
	m.CacheHit("gpt-4o")
	if m.Registry() != nil {
		t.Error("nil Metrics has a registry")
	}
	if err := m.WatchQueues(nil, nil); err != nil {
		t.Errorf("WatchQueues on nil: %v", err)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("nil Metrics handler answered %d, want 404", rec.Code)
	}
}

func TestEventsMoveTheirSeries(t *testing.T) {
	m := metrics.New(metrics.Config{Version: "1.2.3", Build: "abc", Environment: "test"})
	reg := m.Registry()
	want(t, reg, "llmq_jobs_total", L{"outcome": "succeeded"}, 0) // exists before the first job

	m.UpstreamCall("gpt-4o-mini", 200, "ok", "ok", 300*time.Millisecond)
	m.UpstreamCall("gpt-4o-mini", 200, "ok", "ok", 2*time.Second)
	m.UpstreamCall("gpt-4o-mini", 400, "invalid_request", "dead_letter", 10*time.Millisecond)
	m.UpstreamCall("gpt-4o-mini", 0, "timeout", "retry", 15*time.Second)
	m.UpstreamCall("gpt-4o-mini", 429, "rate_limit", "rate_limited", time.Millisecond)
	m.Tokens("gpt-4o-mini", metrics.TokensPrompt, 12)
	m.Tokens("gpt-4o-mini", metrics.TokensCompletion, 30)
	m.Tokens("gpt-4o-mini", metrics.TokensEstimated, 50)
	m.Tokens("gpt-4o-mini", metrics.TokensEstimated, 0)
	m.BudgetWait("gpt-4o-mini", 250*time.Millisecond)
	m.RateLimited("gpt-4o-mini")
	m.Job(metrics.JobSucceeded)
	m.Job(metrics.JobRetry)
	m.Job(metrics.JobSnoozed)
	m.DeadLetter("invalid_request")
	m.CacheHit("gpt-4o-mini")

	want(t, reg, "llmq_upstream_requests_total", L{"model": "gpt-4o-mini", "status_class": "2xx", "class": "ok", "outcome": "ok"}, 2)
	want(t, reg, "llmq_upstream_requests_total", L{"status_class": "4xx", "class": "invalid_request", "outcome": "dead_letter"}, 1)
	want(t, reg, "llmq_upstream_requests_total", L{"status_class": "none", "class": "timeout", "outcome": "retry"}, 1)
	want(t, reg, "llmq_upstream_request_duration_seconds", L{"model": "gpt-4o-mini"}, 5)
	want(t, reg, "llmq_tokens_total", L{"kind": "prompt"}, 12)
	want(t, reg, "llmq_tokens_total", L{"kind": "completion"}, 30)
	want(t, reg, "llmq_tokens_total", L{"kind": "estimated"}, 50)
	want(t, reg, "llmq_budget_wait_seconds", L{"model": "gpt-4o-mini"}, 1)
	want(t, reg, "llmq_rate_limited_total", L{"model": "gpt-4o-mini"}, 1)
	want(t, reg, "llmq_jobs_total", L{"outcome": "succeeded"}, 1)
	want(t, reg, "llmq_jobs_total", L{"outcome": "retry"}, 1)
	want(t, reg, "llmq_jobs_total", L{"outcome": "snoozed"}, 1)
	want(t, reg, "llmq_retries_total", nil, 1)
	want(t, reg, "llmq_dead_letters_total", L{"class": "invalid_request"}, 1)
	want(t, reg, "llmq_cache_hits_total", L{"model": "gpt-4o-mini"}, 1)
	want(t, reg, "llmq_build_info", L{"version": "1.2.3", "build": "abc", "env": "test"}, 1)

	// The latency histogram answers p95 per model: 4 of 5 calls took ≤ 2 s.
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "llmq_upstream_request_duration_seconds" {
			for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
				if b.GetUpperBound() == 2 && b.GetCumulativeCount() != 4 {
					t.Errorf("le=2 bucket holds %d calls, want 4", b.GetCumulativeCount())
				}
			}
		}
	}
}

func TestBreakerStateAndTransitions(t *testing.T) {
	m := metrics.New(metrics.Config{})
	reg := m.Registry()
	m.BreakerState("gpt-4o", metrics.BreakerClosed)
	want(t, reg, "llmq_breaker_state", L{"model": "gpt-4o"}, 0)
	m.BreakerTransition("gpt-4o", metrics.BreakerClosed, metrics.BreakerOpen)
	want(t, reg, "llmq_breaker_state", L{"model": "gpt-4o"}, 2)
	m.BreakerTransition("gpt-4o", "open", "half-open")
	want(t, reg, "llmq_breaker_state", L{"model": "gpt-4o"}, 1)
	want(t, reg, "llmq_breaker_transitions_total", L{"model": "gpt-4o", "from": "open", "to": "half_open"}, 1)
	m.BreakerState("gpt-4o", "bogus") // ignored
	want(t, reg, "llmq_breaker_state", L{"model": "gpt-4o"}, 1)
}

func TestHoldGaugeFollowsEvents(t *testing.T) {
	m := metrics.New(metrics.Config{})
	reg := m.Registry()
	m.HoldPlaced("acct", "quota")
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "quota"}, 1)
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "auth"}, 0)
	want(t, reg, "llmq_holds_placed_total", L{"account": "acct", "class": "quota"}, 1)
	m.HoldActive("acct", "auth")
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "quota"}, 0)
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "auth"}, 1)
	m.HoldLifted("acct")
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "auth"}, 0)
}

func TestLabelKeepsIdentifiersAndDropsFreeText(t *testing.T) {
	for in, out := range map[string]string{
		"gpt-4o-mini":                   "gpt-4o-mini",
		"azure/gpt-4o:2024-08-06":       "azure/gpt-4o:2024-08-06",
		"":                              "unknown",
		"Explain the water cycle":       "other",
		"sk-proj-abcdefghijklmnop":      "other",
		strings.Repeat("a", 65):         "other",
		"model\nwith newline":           "other",
		`x"} 1\nllmq_fake{a="b`:         "other",
		"claude-3-5-sonnet@20240620":    "claude-3-5-sonnet@20240620",
		"meta-llama/Llama-3.1-8B+tuned": "meta-llama/Llama-3.1-8B+tuned",
	} {
		if got := metrics.Label(in); got != out {
			t.Errorf("Label(%q) = %q, want %q", in, got, out)
		}
	}
	if metrics.StatusClass(503) != "5xx" || metrics.StatusClass(0) != "none" || metrics.StatusClass(204) != "2xx" {
		t.Error("StatusClass")
	}
}

// A model field holding a prompt or a key never becomes a label value.
func TestPromptAndKeyNeverReachLabels(t *testing.T) {
	m := metrics.New(metrics.Config{})
	m.UpstreamCall("Tell me the secret plan", 400, "invalid_request", "dead_letter", time.Millisecond)
	m.Tokens("sk-live-0123456789abcdef", metrics.TokensPrompt, 3)
	out := scrape(t, m.Handler())
	for _, leak := range []string{"secret plan", "sk-live"} {
		if strings.Contains(out, leak) {
			t.Errorf("scrape contains %q", leak)
		}
	}
	if !strings.Contains(out, `model="other"`) {
		t.Error("free-text model not reported as other")
	}
}

// Names and units follow Prometheus conventions (promlint).
func TestMetricNamesPassPromlint(t *testing.T) {
	m := metrics.New(metrics.Config{})
	m.UpstreamCall("m", 200, "ok", "ok", time.Second)
	m.Tokens("m", metrics.TokensPrompt, 1)
	m.BudgetWait("m", 0)
	m.RateLimited("m")
	m.HoldPlaced("a", "auth")
	m.BreakerTransition("m", "closed", "open")
	m.DeadLetter("x")
	m.CacheHit("m")
	m.Job(metrics.JobRetry)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "llmq_") || strings.HasPrefix(p.Metric, "asynq_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestQueueCollectorReportsTheQueue(t *testing.T) {
	env := llmqtest.Redis(t)
	client := asynq.NewClient(env.Opt)
	defer client.Close()
	for _, id := range []string{"a", "b"} {
		if _, err := client.Enqueue(asynq.NewTask("llmq:test", nil), asynq.Queue(env.Queue), asynq.TaskID(id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Enqueue(asynq.NewTask("llmq:test", nil), asynq.Queue(env.Queue), asynq.ProcessIn(time.Hour)); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspectorFromRedisClient(env.Client)
	m := metrics.New(metrics.Config{})
	if err := m.WatchQueues(insp, []string{env.Queue, "llmqtest-never-used-" + llmqtest.Suffix()}); err != nil {
		t.Fatal(err)
	}
	reg := m.Registry()
	want(t, reg, "asynq_queue_size", L{"queue": env.Queue}, 3)
	want(t, reg, "asynq_queue_tasks", L{"queue": env.Queue, "state": "pending"}, 2)
	want(t, reg, "asynq_queue_tasks", L{"queue": env.Queue, "state": "scheduled"}, 1)
	want(t, reg, "asynq_queue_paused", L{"queue": env.Queue}, 0)
	if lat, _ := value(t, reg, "asynq_queue_latency_seconds", L{"queue": env.Queue}); lat < 0 {
		t.Errorf("latency %v", lat)
	}
	want(t, reg, "llmq_collector_errors_total", L{"collector": "queues"}, 0)
	if err := m.WatchQueues(insp, nil); err == nil {
		t.Error("a second WatchQueues registered twice")
	}
}

func TestBudgetCollectorReadsTheFleetBudget(t *testing.T) {
	env := llmqtest.Redis(t)
	lim, err := ratelimit.New(env.Client, ratelimit.Config{Prefix: env.Prefix, Account: "acct",
		Budgets: map[string]ratelimit.Budget{"gpt-4o-mini": {RPM: 60, TPM: 10000, BurstRequests: 60, BurstTokens: 10000}}})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Config{})
	if err := m.WatchBudget(lim); err != nil {
		t.Fatal(err)
	}
	reg := m.Registry()
	if _, ok := value(t, reg, "llmq_budget_tokens_per_minute", nil); ok {
		t.Fatal("budget reported before the model was used")
	}
	m.UpstreamCall("gpt-4o-mini", 200, "ok", "ok", time.Millisecond)
	m.UpstreamCall("no-budget-model", 200, "ok", "ok", time.Millisecond) // no budget, no "default": skipped
	want(t, reg, "llmq_budget_tokens_per_minute", L{"model": "gpt-4o-mini"}, 10000)
	want(t, reg, "llmq_budget_tokens_capacity", L{"model": "gpt-4o-mini"}, 10000)
	want(t, reg, "llmq_budget_requests_per_minute", L{"model": "gpt-4o-mini"}, 60)
	want(t, reg, "llmq_budget_requests_available", L{"model": "gpt-4o-mini"}, 60)
	want(t, reg, "llmq_budget_utilization_ratio", L{"model": "gpt-4o-mini", "kind": "tokens"}, 0)
	want(t, reg, "llmq_budget_estimate_factor", L{"model": "gpt-4o-mini"}, 1)
	if _, err := lim.Reserve(context.Background(), "gpt-4o-mini", ratelimit.Cost{Requests: 1, Tokens: 5000}); err != nil {
		t.Fatal(err)
	}
	if u, _ := value(t, reg, "llmq_budget_utilization_ratio", L{"model": "gpt-4o-mini", "kind": "tokens"}); u < 0.45 || u > 0.55 {
		t.Errorf("token utilization %v after taking half the bucket, want about 0.5", u)
	}
	if err := lim.Cooldown(context.Background(), "gpt-4o-mini", time.Now().Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if c, _ := value(t, reg, "llmq_budget_cooldown_seconds", L{"model": "gpt-4o-mini"}); c < 20 || c > 31 {
		t.Errorf("cooldown %v s, want about 30", c)
	}
	want(t, reg, "llmq_collector_errors_total", L{"collector": "budget"}, 0)
}

func TestWatchHoldReadsRedisAtScrape(t *testing.T) {
	env := llmqtest.Redis(t)
	holds := hold.NewStore(env.Client, env.Prefix)
	m := metrics.New(metrics.Config{})
	if err := m.WatchHold("acct", holds); err != nil {
		t.Fatal(err)
	}
	reg := m.Registry()
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "quota"}, 0)
	if _, err := holds.Set(context.Background(), hold.State{Account: "acct", Class: "quota", Reason: "insufficient_quota"}); err != nil {
		t.Fatal(err)
	}
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "quota"}, 1) // placed by another process
	if _, err := holds.Clear(context.Background(), "acct"); err != nil {
		t.Fatal(err)
	}
	want(t, reg, "llmq_hold_active", L{"account": "acct", "class": "quota"}, 0) // `llmq resume`
}

func TestServerServesMetricsAndHealth(t *testing.T) {
	env := llmqtest.Redis(t)
	m := metrics.New(metrics.Config{})
	m.Job(metrics.JobSucceeded)
	healthy := func(ctx context.Context) error { return env.Client.Ping(ctx).Err() }
	srv, err := metrics.Listen("127.0.0.1:0", m, healthy)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	}()
	base := "http://" + srv.Addr()
	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, `llmq_jobs_total{outcome="succeeded"} 1`) {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if err := metrics.Probe(context.Background(), srv.Addr()); err != nil {
		t.Fatalf("Probe of a healthy worker: %v", err)
	}
	// The library says what failed; the command adds where to change it.
	if _, err := metrics.Listen(srv.Addr(), m, nil); !errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "LLMQ_METRICS_ADDR") {
		t.Errorf("second Listen on a busy address: %v; want EADDRINUSE without CLI advice", err)
	}
	// Profiles only when asked for.
	if code, _ := get(t, base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without WithPprof: %d, want 404", code)
	}
	prof, err := metrics.Listen("127.0.0.1:0", m, nil, metrics.WithPprof())
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan error, 1)
	go func() { pdone <- prof.Serve(pctx) }()
	code, body = get(t, "http://"+prof.Addr()+"/debug/pprof/")
	pcancel()
	if err := <-pdone; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
	if code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ with WithPprof: %d\n%s", code, body)
	}
}

// /healthz answers 503 while Redis does not answer.
func TestHealthzIs503WithoutRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens here now
	rdb := redis.NewClient(&redis.Options{Addr: dead, MaxRetries: -1})
	defer rdb.Close()
	srv, err := metrics.Listen("127.0.0.1:0", metrics.New(metrics.Config{}), func(ctx context.Context) error { return rdb.Ping(ctx).Err() })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	code, body := get(t, "http://"+srv.Addr()+"/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "unhealthy") {
		t.Fatalf("/healthz without Redis: %d %q, want 503", code, body)
	}
	if err := metrics.Probe(context.Background(), srv.Addr()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Probe of an unhealthy worker: %v, want a 503 error", err)
	}
}

func TestDisabled(t *testing.T) {
	for addr, off := range map[string]bool{"off": true, "OFF": true, "": true, ":9464": false, ":0": false} {
		if metrics.Disabled(addr) != off {
			t.Errorf("Disabled(%q) = %v", addr, !off)
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape answered %d", rec.Code)
	}
	return rec.Body.String()
}

// Every worker reports the fleet's breakers as they stand in Redis: a
// breaker another process opened shows open here, and shows closed again
// once that process's probe closed it.
func TestWatchBreakersReadsRedisAtScrape(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	clk := llmqtest.NewClock(time.Unix(1_800_000_000, 0))
	other, err := breaker.New(env.Client, breaker.Config{Prefix: env.Prefix, Failures: 1, Open: time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Config{})
	if err := m.WatchBreakers(other); err != nil {
		t.Fatal(err)
	}
	p, err := other.Allow(ctx, "gpt-4o")
	if err != nil || !p.Allowed {
		t.Fatalf("allow: %+v %v", p, err)
	}
	if err := other.Record(ctx, p, breaker.Failure); err != nil {
		t.Fatal(err)
	}
	reg := m.Registry()
	want(t, reg, "llmq_breaker_state", L{"model": "gpt-4o"}, 2)
	clk.Advance(time.Minute)
	p, err = other.Allow(ctx, "gpt-4o")
	if err != nil || !p.Allowed || !p.Probe {
		t.Fatalf("probe after the open interval: %+v %v", p, err)
	}
	if err := other.Record(ctx, p, breaker.Success); err != nil {
		t.Fatal(err)
	}
	want(t, reg, "llmq_breaker_state", L{"model": "gpt-4o"}, 0)
}

// Series looked up once keep counting from the cache; models past the
// cache's room still count, through the vectors.
func TestSeriesCountPastTheCache(t *testing.T) {
	m := metrics.New(metrics.Config{})
	const models = 1500 // more than the cache holds
	for range 2 {
		for i := range models {
			m.UpstreamCall(fmt.Sprintf("m%d", i), 200, "ok", "ok", time.Millisecond)
		}
	}
	for _, model := range []string{"m0", fmt.Sprintf("m%d", models-1)} {
		want(t, m.Registry(), "llmq_upstream_requests_total", L{"model": model, "status_class": "2xx"}, 2)
		want(t, m.Registry(), "llmq_upstream_request_duration_seconds", L{"model": model}, 2)
	}
}
