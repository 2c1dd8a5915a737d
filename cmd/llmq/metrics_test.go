package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
)

// scrape is one parsed /metrics answer.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, addr string) (scrape, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return mfs, string(b)
}

// get returns the sum over the series of name matching labels (a counter's
// or gauge's value, a histogram's count), and whether any matched.
func (s scrape) get(name string, labels map[string]string) (float64, bool) {
	mf, ok := s[name]
	if !ok {
		return 0, false
	}
	sum, found := 0.0, false
series:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue series
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, found
}

// metricsAddr waits for the worker's "serving /metrics" event and returns
// the address it bound.
func metricsAddr(t *testing.T, logs fmt.Stringer) string {
	t.Helper()
	var addr string
	waitFor(t, "the worker's metrics server", 15*time.Second, func() bool {
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var ev struct {
				Addr string `json:"metrics_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Addr != "" {
				addr = ev.Addr
				return true
			}
		}
		return false
	})
	return addr
}

// A real worker process against the fake upstream: /healthz answers, and
// /metrics names every series with its labels and they move as jobs run,
// a dead letter, a retry and a 429 among them. No label value carries the
// API key or prompt text.
func TestWorkerMetricsEndpoint(t *testing.T) {
	// The first three calls: a 400 (dead letter), a 500 (retry), a 429
	// (rate limited, no attempt burned); every other call succeeds.
	p := newProcEnv(t, fakeupstream.Config{Faults: "400,500,ratelimit:100ms"}, func(c *config.Config) {
		c.Budgets = map[string]config.Budget{"default": {RPM: 6000, TPM: 2000000}}
	})
	w := p.start("worker", "--concurrency", "1", "--metrics-addr", "127.0.0.1:0")
	addr := metricsAddr(t, w.logs)

	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz answered %d while Redis is up", resp.StatusCode)
	}
	if _, errOut, code := p.run("", "worker", "--probe", "--metrics-addr", addr); code != 0 {
		t.Fatalf("worker --probe of a healthy worker: exit %d: %s", code, errOut)
	}

	before, _ := scrapeMetrics(t, addr)
	if v, ok := before.get("llmq_jobs_total", map[string]string{"outcome": "succeeded"}); !ok || v != 0 {
		t.Fatalf("before any job llmq_jobs_total{outcome=succeeded} = %v (present %v), want 0", v, ok)
	}

	const n = 6
	out, errOut, code := p.run(jsonl(n), "enqueue", "-", "--batch", "metrics", "--wait")
	if code != exitJobsFailed || strings.TrimSpace(out) != "metrics" {
		t.Fatalf("enqueue --wait: exit %d, stdout %q, stderr %s; want exit %d (one dead letter)", code, out, errOut, exitJobsFailed)
	}

	// The worker counts a job's outcome just after storing its result,
	// which `--wait` may see first: wait for the last count.
	waitFor(t, "the last job's outcome to be counted", 10*time.Second, func() bool {
		m, _ := scrapeMetrics(t, addr)
		v, _ := m.get("llmq_jobs_total", map[string]string{"outcome": "succeeded"})
		return v == n-1
	})
	after, text := scrapeMetrics(t, addr)
	model := "gpt-4o-mini"
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"llmq_upstream_requests_total", map[string]string{"model": model, "status_class": "2xx", "class": "ok", "outcome": "ok"}, n - 1, n - 1},
		{"llmq_upstream_requests_total", map[string]string{"model": model, "status_class": "4xx", "class": "invalid_request", "outcome": "dead_letter"}, 1, 1},
		{"llmq_upstream_requests_total", map[string]string{"model": model, "status_class": "5xx", "outcome": "retry"}, 1, 1},
		{"llmq_upstream_requests_total", map[string]string{"model": model, "status_class": "4xx", "class": "rate_limit", "outcome": "rate_limited"}, 1, 1},
		{"llmq_upstream_request_duration_seconds", map[string]string{"model": model}, n + 2, n + 2},
		{"llmq_tokens_total", map[string]string{"model": model, "kind": "prompt"}, 1, 1e9},
		{"llmq_tokens_total", map[string]string{"model": model, "kind": "completion"}, 1, 1e9},
		{"llmq_tokens_total", map[string]string{"model": model, "kind": "estimated"}, 1, 1e9},
		{"llmq_budget_wait_seconds", map[string]string{"model": model}, n + 2, n + 2},
		{"llmq_rate_limited_total", map[string]string{"model": model}, 1, 1},
		{"llmq_jobs_total", map[string]string{"outcome": "succeeded"}, n - 1, n - 1},
		{"llmq_jobs_total", map[string]string{"outcome": "dead_letter"}, 1, 1},
		{"llmq_jobs_total", map[string]string{"outcome": "retry"}, 1, 1},
		{"llmq_jobs_total", map[string]string{"outcome": "snoozed"}, 1, 1},
		{"llmq_retries_total", nil, 1, 1},
		{"llmq_dead_letters_total", map[string]string{"class": "invalid_request"}, 1, 1},
		{"llmq_hold_active", map[string]string{"account": "default", "class": "quota"}, 0, 0},
		{"llmq_budget_tokens_per_minute", map[string]string{"model": model}, 2000000, 2000000},
		{"llmq_budget_utilization_ratio", map[string]string{"model": model, "kind": "requests"}, 0, 1},
		{"asynq_queue_tasks", map[string]string{"queue": p.env.Queue, "state": "archived"}, 1, 1},
		{"asynq_queue_size", map[string]string{"queue": p.env.Queue}, 1, n},
		{"asynq_tasks_processed_total", map[string]string{"queue": p.env.Queue}, n, 1e9},
		{"llmq_build_info", nil, 1, 1},
		{"go_goroutines", nil, 1, 1e9},
	} {
		v, ok := after.get(c.name, c.labels)
		if !ok || v < c.min || v > c.max {
			t.Errorf("%s%v = %v (present %v), want %v..%v", c.name, c.labels, v, ok, c.min, c.max)
		}
	}
	for _, leak := range []string{"sk-proc-test-key", "prompt 3"} {
		if strings.Contains(text, leak) {
			t.Errorf("/metrics contains %q", leak)
		}
	}
	if t.Failed() {
		t.Logf("worker log:\n%s", w.logs.String())
	}
	w.stop(t, 10*time.Second)
}

// --metrics-addr off runs the worker without a metrics server; a busy
// address stops the worker at start with an error that says what to do.
func TestWorkerMetricsAddrOffAndBusy(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	w := p.start("worker", "--metrics-addr", "127.0.0.1:0")
	addr := metricsAddr(t, w.logs)
	_, errOut, code := p.run("", "worker", "--metrics-addr", addr)
	if code == 0 || !strings.Contains(errOut, "LLMQ_METRICS_ADDR") {
		t.Fatalf("second worker on a busy metrics address: exit %d: %s; want a failure naming LLMQ_METRICS_ADDR", code, errOut)
	}
	off := p.start("worker", "--metrics-addr", "off")
	waitFor(t, "the worker without metrics to start", 15*time.Second, func() bool {
		return strings.Contains(off.logs.String(), "worker started")
	})
	if l := off.logs.String(); !strings.Contains(l, "metrics server off") || strings.Contains(l, `"metrics_addr"`) {
		t.Errorf("worker with --metrics-addr off: %s", l)
	}
	off.stop(t, 10*time.Second)
	w.stop(t, 10*time.Second)
}
