package main

import (
	"context"
	"fmt"
	"sort"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/ratelimit"
)

// startMetrics serves the worker's /metrics and /healthz on
// worker.metrics_addr (LLMQ_METRICS_ADDR, --metrics-addr) until stop is
// called. With the address "off" it returns nil metrics (the worker records
// nothing) and a no-op stop. A busy address is an error: the worker does
// not start half-observed.
func (a *app) startMetrics(rdb redis.UniversalClient, limiter *ratelimit.Limiter) (m *metrics.Metrics, stop func(), err error) {
	addr := a.cfg.Worker.MetricsAddr
	if metrics.Disabled(addr) {
		a.log.Info().Msg("metrics server off (worker.metrics_addr / LLMQ_METRICS_ADDR / --metrics-addr is \"off\")")
		return nil, func() {}, nil
	}
	m = metrics.New(metrics.Config{Version: version, Build: build, Environment: a.cfg.Log.Environment})
	queues := make([]string, 0, len(a.cfg.Worker.Queues))
	for q := range a.cfg.Worker.Queues {
		queues = append(queues, q)
	}
	sort.Strings(queues)
	// The inspector shares rdb; it is not closed on its own.
	if err := m.WatchQueues(asynq.NewInspectorFromRedisClient(rdb), queues); err != nil {
		return nil, nil, err
	}
	if limiter != nil {
		if err := m.WatchBudget(limiter); err != nil {
			return nil, nil, err
		}
	}
	if err := m.WatchHold(a.cfg.Upstream.Account, hold.NewStore(rdb, a.cfg.Prefix)); err != nil {
		return nil, nil, err
	}
	var opts []metrics.ListenOption
	if a.cfg.Worker.Pprof {
		opts = append(opts, metrics.WithPprof())
	}
	srv, err := metrics.Listen(addr, m, func(ctx context.Context) error { return rdb.Ping(ctx).Err() }, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (choose a free address with --metrics-addr or LLMQ_METRICS_ADDR, or \"off\")", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			a.log.Error().Err(err).Msg("metrics server stopped; the worker goes on without /metrics and /healthz")
		}
	}()
	a.log.Info().Str("metrics_addr", srv.Addr()).Msg("serving /metrics and /healthz")
	return m, func() { cancel(); <-done }, nil
}
