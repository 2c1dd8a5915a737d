package main

import (
	"fmt"
	"maps"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

func (a *app) workerCmd() *cobra.Command {
	var (
		concurrency int
		queues      string
		metricsAddr string
		probe       bool
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker: drain the queues until SIGTERM/SIGINT, then shut down gracefully",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("concurrency") {
				a.cfg.Worker.Concurrency = concurrency
			}
			if cmd.Flags().Changed("queues") {
				q, err := parseQueues(queues)
				if err != nil {
					return err
				}
				a.cfg.Worker.Queues = q
			}
			a.addTenantQueues()
			if cmd.Flags().Changed("metrics-addr") {
				a.cfg.Worker.MetricsAddr = metricsAddr
			}
			if probe {
				// Container health check: ask a running worker's /healthz.
				return metrics.Probe(cmd.Context(), a.cfg.Worker.MetricsAddr)
			}
			if err := a.cfg.Validate(); err != nil {
				return err
			}
			return a.runWorker(cmd)
		},
	}
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "jobs run at once (default from config: worker.concurrency)")
	cmd.Flags().StringVar(&queues, "queues", "", "queues and priorities, e.g. \"llmq:3,bulk:1\" (default from config: worker.queues)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve /metrics and /healthz here, e.g. \":9464\"; \":0\" picks a free port, \"off\" disables (default from config: worker.metrics_addr, LLMQ_METRICS_ADDR)")
	cmd.Flags().BoolVar(&probe, "probe", false, "do not run: exit 0 if the worker on --metrics-addr answers /healthz with 200 (container health check)")
	return cmd
}

// addTenantQueues adds the queue of every Batch API tenant (serve.clients,
// LLMQ_SERVE_KEYS names) to the worker's queues, each with the priority of
// the default queue: tenants with backlogs at the same time share the
// budget evenly instead of first come, first served.
func (a *app) addTenantQueues() {
	prio := max(1, a.cfg.Worker.Queues[a.cfg.Queue])
	queues := maps.Clone(a.cfg.Worker.Queues)
	for _, t := range a.serveTenants() {
		if q := batchapi.TenantQueue(a.cfg.Queue, t); queues[q] == 0 {
			queues[q] = prio
		}
	}
	a.cfg.Worker.Queues = queues
}

// parseQueues reads "name[:priority],..." into a priority map.
func parseQueues(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, prio, found := strings.Cut(part, ":")
		p := 1
		if found {
			n, err := strconv.Atoi(prio)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--queues: %q: priority must be a whole number ≥ 1", part)
			}
			p = n
		}
		out[name] = p
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--queues: name at least one queue, e.g. \"llmq\"")
	}
	return out, nil
}

// keySource returns the API key source: the key file when set (re-read on
// change), else OPENAI_API_KEY.
func (a *app) keySource() (upstream.KeySource, error) {
	var ks upstream.KeySource
	if a.cfg.Upstream.APIKeyFile != "" {
		ks = upstream.FileKey(a.cfg.Upstream.APIKeyFile)
	} else {
		ks = upstream.StaticKey(a.cfg.Upstream.APIKey)
	}
	if _, err := ks.Key(); err != nil {
		if a.cfg.Upstream.APIKeyFile != "" {
			return nil, fmt.Errorf("%w (LLMQ_API_KEY_FILE: create the file or fix the path)", err)
		}
		return nil, fmt.Errorf("%w (set OPENAI_API_KEY or LLMQ_API_KEY_FILE)", err)
	}
	return ks, nil
}

func (a *app) runWorker(cmd *cobra.Command) error {
	ctx := cmd.Context()
	rdb, _, err := a.redisClient(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	keys, err := a.keySource()
	if err != nil {
		return err
	}
	uc := upstream.Config{
		BaseURL:               a.cfg.Upstream.BaseURL,
		Key:                   keys,
		ConnectTimeout:        a.cfg.Upstream.ConnectTimeout,
		ResponseHeaderTimeout: a.cfg.Upstream.ResponseHeaderTimeout,
		FirstByteTimeout:      a.cfg.Upstream.FirstByteTimeout,
		FirstEventTimeout:     a.cfg.Upstream.FirstEventTimeout,
		IdleTimeout:           a.cfg.Upstream.IdleTimeout,
		DisableStream:         !a.cfg.Upstream.Stream,
		NoStreamModels:        a.cfg.Upstream.NoStreamModels,
		UserAgent:             "llmq/" + version,
	}
	if a.cfg.Upstream.AzureAPIVersion != "" {
		uc.Azure = &upstream.Azure{APIVersion: a.cfg.Upstream.AzureAPIVersion}
	}
	client, err := upstream.New(uc)
	if err != nil {
		return err
	}
	limiter, err := a.limiter(rdb)
	if err != nil {
		return err
	}
	m, stopMetrics, err := a.startMetrics(rdb, limiter)
	if err != nil {
		return err
	}
	defer stopMetrics()
	pol := policy.DefaultPolicy()
	pol.Attempts, pol.Base, pol.Cap, pol.RetryAfterCap = a.cfg.Retry.Attempts, a.cfg.Retry.Base, a.cfg.Retry.Cap, a.cfg.Retry.RetryAfterCap
	w, err := worker.New(worker.Config{
		Redis:            rdb,
		Upstream:         client,
		Keys:             keys,
		Limiter:          limiter,
		Prefix:           a.cfg.Prefix,
		Account:          a.cfg.Upstream.Account,
		Concurrency:      a.cfg.Worker.Concurrency,
		Queues:           a.cfg.Worker.Queues,
		ShutdownTimeout:  a.cfg.Worker.ShutdownTimeout,
		PollInterval:     a.cfg.Worker.PollInterval,
		Policy:           &pol,
		HoldRecheck:      a.cfg.Worker.HoldRecheck,
		CallTimeout:      a.cfg.Upstream.CallTimeout,
		ResultTTL:        a.cfg.Results.TTL,
		DefaultMaxTokens: a.cfg.Estimate.DefaultMaxTokens,
		EstimateMethod:   jobs.Method(a.cfg.Estimate.Method),
		Log:              a.log,
		Metrics:          m,
		Breaker:          breakerConfig(a.cfg.Breaker),
		Fallbacks:        a.cfg.Fallbacks,
		CacheTTL:         a.cfg.Cache.TTL,
		StaticResponse:   a.cfg.StaticResponse.Text,
		StaticForAll:     a.cfg.StaticResponse.AllJobs,
	})
	if err != nil {
		return err
	}
	if err := m.WatchBreakers(w.Breaker()); err != nil {
		return err
	}
	return w.Run(ctx)
}
