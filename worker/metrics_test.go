package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/worker"
)

// A 503 counts as outcome="fallback" in llmq_upstream_requests_total only
// when the job has a tier to fall back to; without one it is counted as
// what it meant: a retry.
func TestFallbackOutcomeOnlyWithATier(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fallback []string
		want     map[string]float64 // outcome label -> calls
	}{
		{"no fallback", nil, map[string]float64{"retry": 1, "fallback": 0, "ok": 1}},
		{"with fallback", []string{"gpt-4o"}, map[string]float64{"retry": 0, "fallback": 1, "ok": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, fakeupstream.Config{Faults: "503"})
			m := metrics.New(metrics.Config{})
			h.startWorker(workerOpts{mod: func(c *worker.Config) { c.Metrics = m }})
			if _, err := h.prod.Enqueue(context.Background(), &jobs.Job{ID: "fb", Body: body("hello"), Fallback: tc.fallback}); err != nil {
				t.Fatal(err)
			}
			if r := h.result("fb"); r.Status != jobs.StatusSucceeded {
				t.Fatalf("result %+v", r)
			}
			calls := map[string]float64{}
			h.waitFor("both calls counted", 10*time.Second, func() bool {
				for o := range tc.want {
					calls[o] = 0
				}
				mfs, _ := m.Registry().Gather()
				for _, mf := range mfs {
					if mf.GetName() != "llmq_upstream_requests_total" {
						continue
					}
					for _, s := range mf.GetMetric() {
						for _, lp := range s.GetLabel() {
							if lp.GetName() == "outcome" {
								calls[lp.GetValue()] += s.GetCounter().GetValue()
							}
						}
					}
				}
				return calls["ok"] == 1
			})
			for o, n := range tc.want {
				if calls[o] != n {
					t.Errorf("llmq_upstream_requests_total{outcome=%q} = %v, want %v (all: %v)", o, calls[o], n, calls)
				}
			}
		})
	}
}
