package metrics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/ratelimit"
)

// scrapeTimeout bounds the Redis reads of one scrape-time collector.
const scrapeTimeout = 2 * time.Second

// BudgetSource is what the budget collector reads: *ratelimit.Limiter.
type BudgetSource interface {
	Usage(ctx context.Context, model string) (ratelimit.Snapshot, error)
}

// BreakerSource is what the breaker collector reads: *breaker.Breaker.
type BreakerSource interface {
	List(ctx context.Context) ([]breaker.Status, error)
}

// HoldSource is what the hold collector reads: *hold.Store.
type HoldSource interface {
	Get(ctx context.Context, account string) (*hold.State, error)
}

// WatchBudget adds a collector that reads, at each scrape, the fleet-wide
// budget of every model this process has called (as its metrics saw them):
// llmq_budget_{requests,tokens}_{per_minute,capacity,available} by model,
// llmq_budget_utilization_ratio by model and kind (requests, tokens), and
// llmq_budget_cooldown_seconds by model. A dimension the budget does not
// limit has no gauges (no bucket); the cooldown of a 429 is reported for
// unlimited budgets too. Every worker of a fleet reports the same shared budget: aggregate
// with max, not sum.
func (m *Metrics) WatchBudget(src BudgetSource) error {
	if m == nil {
		return nil
	}
	if src == nil {
		return errors.New("metrics: WatchBudget needs a budget source (the worker's *ratelimit.Limiter)")
	}
	if err := m.reg.Register(newBudgetCollector(m, src)); err != nil {
		return fmt.Errorf("metrics: register the budget collector (call WatchBudget once): %w", err)
	}
	return nil
}

// WatchHold makes llmq_hold_active read account's hold from src at each
// scrape, so every worker reports the fleet's hold as it stands in Redis,
// including holds placed by other processes and lifts by `llmq resume`.
// Without it the gauge shows what this process's jobs last saw.
func (m *Metrics) WatchHold(account string, src HoldSource) error {
	if m == nil {
		return nil
	}
	if src == nil {
		return errors.New("metrics: WatchHold needs a hold source (a *hold.Store)")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holdSrc, m.holdAccount = src, account
	return nil
}

// WatchBreakers makes llmq_breaker_state read every model's breaker from
// src at each scrape, so every worker reports the fleet's breakers as they
// stand in Redis, including transitions made by other processes. Without
// it the gauge shows what this process last saw.
func (m *Metrics) WatchBreakers(src BreakerSource) error {
	if m == nil {
		return nil
	}
	if src == nil {
		return errors.New("metrics: WatchBreakers needs a breaker source (the worker's *breaker.Breaker)")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.breakerSrc = src
	return nil
}

// breakerCollector exposes llmq_breaker_state, refreshed from the breaker
// source first when one is set.
type breakerCollector struct{ m *Metrics }

func (c breakerCollector) Describe(ch chan<- *prometheus.Desc) { c.m.breakerState.Describe(ch) }

func (c breakerCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	src := c.m.breakerSrc
	c.m.mu.Unlock()
	if src != nil {
		ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
		list, err := src.List(ctx)
		cancel()
		if err != nil {
			c.m.collectorErrors.WithLabelValues("breaker").Inc()
		} else {
			// Redis is the truth: a breaker gone from it (expired while
			// closed) is no longer reported open.
			c.m.breakerState.Reset()
			for _, st := range list {
				c.m.BreakerState(st.Model, string(st.State))
			}
		}
	}
	c.m.breakerState.Collect(ch)
}

// WatchQueues adds a collector that reads asynq's queue statistics at each
// scrape: asynq_queue_tasks{queue,state}, asynq_queue_size,
// asynq_queue_latency_seconds, asynq_queue_memory_usage_approx_bytes,
// asynq_queue_paused, asynq_tasks_processed_total and
// asynq_tasks_failed_total. queues names the queues to report; empty means
// every queue in Redis. Every worker reports the same queues: aggregate with
// max, not sum. The caller keeps insp open while the metrics are served.
func (m *Metrics) WatchQueues(insp *asynq.Inspector, queues []string) error {
	if m == nil {
		return nil
	}
	if insp == nil {
		return errors.New("metrics: WatchQueues needs an asynq inspector (asynq.NewInspectorFromRedisClient)")
	}
	if err := m.reg.Register(newQueueCollector(m, insp, queues)); err != nil {
		return fmt.Errorf("metrics: register the queue collector (call WatchQueues once): %w", err)
	}
	return nil
}

// holdCollector exposes llmq_hold_active, refreshed from the hold source
// first when one is set.
type holdCollector struct{ m *Metrics }

func (c holdCollector) Describe(ch chan<- *prometheus.Desc) { c.m.holdActive.Describe(ch) }

func (c holdCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	src, account := c.m.holdSrc, c.m.holdAccount
	c.m.mu.Unlock()
	if src != nil {
		ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
		st, err := src.Get(ctx, account)
		cancel()
		switch {
		case err != nil:
			c.m.collectorErrors.WithLabelValues("hold").Inc()
		case st == nil:
			c.m.HoldLifted(account)
		default:
			c.m.HoldActive(account, st.Class)
		}
	}
	c.m.holdActive.Collect(ch)
}

// budgetCollector reads the fleet-wide budgets at scrape time. Requests
// and tokens are different units, so each has gauges of its own; only the
// utilization ratio, a unitless share, is one metric with a kind label. A
// dimension the budget does not limit (rpm or tpm 0) has no gauges: there
// is no bucket to report; the cooldown is reported for every budget.
type budgetCollector struct {
	m   *Metrics
	src BudgetSource

	reqLimit, reqCapacity, reqAvailable *prometheus.Desc
	tokLimit, tokCapacity, tokAvailable *prometheus.Desc
	util, cooldown, factor              *prometheus.Desc
}

func newBudgetCollector(m *Metrics, src BudgetSource) *budgetCollector {
	md := []string{"model"}
	return &budgetCollector{
		m: m, src: src,
		reqLimit:     prometheus.NewDesc("llmq_budget_requests_per_minute", "Fleet-wide request budget per minute in force, by model: the configured rpm, or the provider's x-ratelimit-limit-requests when lower.", md, nil),
		reqCapacity:  prometheus.NewDesc("llmq_budget_requests_capacity", "Size of the fleet-wide request bucket (burst) now, in requests, by model.", md, nil),
		reqAvailable: prometheus.NewDesc("llmq_budget_requests_available", "Requests the fleet-wide request bucket holds now, by model.", md, nil),
		tokLimit:     prometheus.NewDesc("llmq_budget_tokens_per_minute", "Fleet-wide token budget per minute in force, by model: the configured tpm, or the provider's x-ratelimit-limit-tokens when lower.", md, nil),
		tokCapacity:  prometheus.NewDesc("llmq_budget_tokens_capacity", "Size of the fleet-wide token bucket (burst) now, in tokens, by model.", md, nil),
		tokAvailable: prometheus.NewDesc("llmq_budget_tokens_available", "Tokens the fleet-wide token bucket holds now, by model.", md, nil),
		util:         prometheus.NewDesc("llmq_budget_utilization_ratio", "Share of the fleet-wide budget bucket in use now (1 - available/capacity), by model and kind (requests, tokens).", []string{"model", "kind"}, nil),
		cooldown:     prometheus.NewDesc("llmq_budget_cooldown_seconds", "Seconds left of a fleet-wide 429 cooldown on the model (0 when none), limited budget or not.", md, nil),
		factor:       prometheus.NewDesc("llmq_budget_estimate_factor", "Calibration factor of the model's budget: the provider's tokens per estimated token, learned from its x-ratelimit-remaining-tokens readings (1 until learned).", md, nil),
	}
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.reqLimit, c.reqCapacity, c.reqAvailable, c.tokLimit, c.tokCapacity, c.tokAvailable, c.util, c.cooldown, c.factor} {
		ch <- d
	}
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	for _, model := range c.m.seenModels() {
		s, err := c.src.Usage(ctx, model)
		if errors.Is(err, ratelimit.ErrNoBudget) {
			continue
		}
		if err != nil {
			c.m.collectorErrors.WithLabelValues("budget").Inc()
			continue
		}
		for _, d := range []struct {
			kind                 string
			limit, capacity      int64
			available            float64
			limitD, capD, availD *prometheus.Desc
		}{
			{"requests", s.RPM, s.RequestCapacity, s.Requests, c.reqLimit, c.reqCapacity, c.reqAvailable},
			{"tokens", s.TPM, s.TokenCapacity, s.Tokens, c.tokLimit, c.tokCapacity, c.tokAvailable},
		} {
			if d.capacity <= 0 {
				continue
			}
			ch <- prometheus.MustNewConstMetric(d.limitD, prometheus.GaugeValue, float64(d.limit), model)
			ch <- prometheus.MustNewConstMetric(d.capD, prometheus.GaugeValue, float64(d.capacity), model)
			ch <- prometheus.MustNewConstMetric(d.availD, prometheus.GaugeValue, d.available, model)
			util := 1 - d.available/float64(d.capacity)
			ch <- prometheus.MustNewConstMetric(c.util, prometheus.GaugeValue, min(max(util, 0), 1), model, d.kind)
		}
		cool := 0.0
		if !s.CooldownUntil.IsZero() && s.CooldownUntil.After(s.At) {
			cool = s.CooldownUntil.Sub(s.At).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(c.cooldown, prometheus.GaugeValue, cool, model)
		if s.TokenCapacity > 0 {
			ch <- prometheus.MustNewConstMetric(c.factor, prometheus.GaugeValue, s.Factor, model)
		}
	}
}

// queueCollector reads asynq's queue statistics at scrape time.
type queueCollector struct {
	m      *Metrics
	insp   *asynq.Inspector
	queues []string

	tasks, size, latency, memory, paused, processed, failed *prometheus.Desc
}

func newQueueCollector(m *Metrics, insp *asynq.Inspector, queues []string) *queueCollector {
	q := []string{"queue"}
	return &queueCollector{
		m: m, insp: insp, queues: append([]string(nil), queues...),
		tasks:     prometheus.NewDesc("asynq_queue_tasks", "Tasks in the asynq queue by state (pending, active, scheduled, retry, archived, completed, aggregating).", []string{"queue", "state"}, nil),
		size:      prometheus.NewDesc("asynq_queue_size", "Tasks in the asynq queue, all states.", q, nil),
		latency:   prometheus.NewDesc("asynq_queue_latency_seconds", "Age of the oldest pending task in the asynq queue.", q, nil),
		memory:    prometheus.NewDesc("asynq_queue_memory_usage_approx_bytes", "Approximate Redis memory the asynq queue uses (sampled).", q, nil),
		paused:    prometheus.NewDesc("asynq_queue_paused", "1 when the asynq queue is paused, else 0.", q, nil),
		processed: prometheus.NewDesc("asynq_tasks_processed_total", "Tasks the asynq queue has processed (succeeded or failed), fleet-wide.", q, nil),
		failed:    prometheus.NewDesc("asynq_tasks_failed_total", "Task runs that failed in the asynq queue, fleet-wide.", q, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tasks, c.size, c.latency, c.memory, c.paused, c.processed, c.failed} {
		ch <- d
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	// Queues exist in asynq once a task was enqueued to them; a configured
	// queue not there yet has nothing to report.
	all, err := c.insp.Queues()
	if err != nil {
		c.m.collectorErrors.WithLabelValues("queues").Inc()
		return
	}
	queues := all
	if len(c.queues) > 0 {
		exists := make(map[string]bool, len(all))
		for _, q := range all {
			exists[q] = true
		}
		queues = queues[:0:0]
		for _, q := range c.queues {
			if exists[q] {
				queues = append(queues, q)
			}
		}
	}
	for _, q := range queues {
		info, err := c.insp.GetQueueInfo(q)
		if err != nil {
			c.m.collectorErrors.WithLabelValues("queues").Inc()
			continue
		}
		for state, n := range map[string]int{
			"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled, "retry": info.Retry,
			"archived": info.Archived, "completed": info.Completed, "aggregating": info.Aggregating,
		} {
			ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), q, state)
		}
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(info.Size), q)
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q)
		ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(info.MemoryUsage), q)
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, paused, q)
		ch <- prometheus.MustNewConstMetric(c.processed, prometheus.CounterValue, float64(info.ProcessedTotal), q)
		ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(info.FailedTotal), q)
	}
}
