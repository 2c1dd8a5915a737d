package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/time/rate"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest/fleet"
	"github.com/llmq/llmq/upstream"
)

// Worker process handling of the llmq rows.
const (
	// termWithin bounds the workers' graceful exit after SIGTERM.
	termWithin = 15 * time.Second
	// workerShutdown is the workers' shutdown_timeout.
	workerShutdown = 5 * time.Second
	// benchKey is the upstream key every row presents.
	benchKey = "sk-bench-budget-0123456789"
)

// llmqFleet is `llmq worker` processes sharing one budget, started through
// the shared fleet harness (llmqtest/fleet).
type llmqFleet struct {
	dir  string
	f    *fleet.Fleet
	dump bool

	mu      sync.Mutex // serialises add and stop
	stopped bool
}

// newLLMQFleet writes the workers' configuration: llmq's defaults with the
// row's Redis slice and queue, the scenario's budget (RPM/TPM, the
// provider's bursts only when sc.llmqBursts), and r's estimate method when
// set.
func newLLMQFleet(o options, sc *scenario, r row, e *env, url string) (workerFleet, error) {
	dir, err := os.MkdirTemp("", "llmq-bench-budget")
	if err != nil {
		return nil, fmt.Errorf("temp dir for the worker config: %w", err)
	}
	s := config.Default()
	s.RedisURL, s.Upstream.BaseURL = "redis://"+o.redisAddr+"/0", url
	s.Prefix, s.Queue = e.prefix, e.queue
	s.Worker.Queues = map[string]int{e.queue: 1}
	s.Worker.ShutdownTimeout = workerShutdown
	s.Worker.MetricsAddr = "127.0.0.1:0"
	b := config.Budget{RPM: sc.rpm, TPM: sc.tpm}
	if sc.llmqBursts {
		b.Burst, b.BurstRequests = sc.burstTok, sc.burstReq
	}
	s.Budgets = map[string]config.Budget{config.DefaultBudget: b}
	s.BudgetMaxWait, s.BudgetTransit = o.maxWait, o.transit
	s.Estimate.DefaultMaxTokens = fakeupstream.DefaultCompletion
	if r.method != "" {
		s.Estimate.Method = string(r.method)
	}
	s.Log.Level = "warn"
	f, err := fleet.New(fleet.Config{Bin: o.bin, Dir: dir, Settings: s, APIKey: benchKey})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%w (build it with `make build`)", err)
	}
	return &llmqFleet{dir: dir, f: f, dump: o.keepWorkerLog}, nil
}

// add starts procs more workers with concurrency handlers each, all at
// once: each returns once asynq lists it.
func (f *llmqFleet) add(ctx context.Context, procs, concurrency int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return errors.New("llmq fleet stopped")
	}
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			_, errs[i] = f.f.Start(ctx, "--concurrency", strconv.Itoa(concurrency))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stop sends SIGTERM to every worker, waits for them to exit and removes
// the scratch directory.
func (f *llmqFleet) stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	defer os.RemoveAll(f.dir)
	err := f.f.Stop(termWithin)
	if f.dump {
		for _, w := range f.f.Workers() {
			fmt.Fprintf(os.Stderr, "--- worker %d log ---\n%s", w.N, w.Log())
		}
	}
	return errors.Join(err, f.f.Close())
}

// baselineFleet is plain asynq servers in this process.
type baselineFleet struct {
	o     options
	sc    *scenario
	e     *env
	url   string
	div   int64
	mu    sync.Mutex
	added []*asynq.Server
}

// newBaselineFleet returns asynq servers whose handler waits on
// golang.org/x/time/rate limiters (a request one and a token one) and calls
// the upstream: the budget and the provider's buckets split evenly across
// procs of them, or (split false) the whole budget each. A failed call is
// retried by asynq after the server's Retry-After when it sent one, else
// after asynq's default backoff.
func newBaselineFleet(o options, sc *scenario, e *env, url string, procs int, split bool) workerFleet {
	div := int64(1)
	if split {
		div = int64(procs)
	}
	return &baselineFleet{o: o, sc: sc, e: e, url: url, div: div}
}

// add starts procs more servers with concurrency handlers each.
func (f *baselineFleet) add(_ context.Context, procs, concurrency int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	capReq, capTok := f.sc.capacities()
	for range procs {
		client, err := upstream.New(upstream.Config{BaseURL: f.url, Key: upstream.StaticKey(benchKey)})
		if err != nil {
			return err
		}
		h := &plainHandler{
			client: client,
			est:    jobs.NewEstimator(fakeupstream.DefaultCompletion, jobs.WithMethod(jobs.MethodTokenizer)),
			reqs:   limiter(f.sc.rpm, capReq, f.div),
			toks:   limiter(f.sc.tpm, capTok, f.div),
		}
		srv := asynq.NewServer(asynq.RedisClientOpt{Addr: f.o.redisAddr}, asynq.Config{
			Concurrency:    concurrency,
			Queues:         map[string]int{f.e.queue: 1},
			RetryDelayFunc: retryAfter,
			LogLevel:       asynq.ErrorLevel,
		})
		mux := asynq.NewServeMux()
		mux.Handle(jobs.TaskType, h)
		if err := srv.Start(mux); err != nil {
			return fmt.Errorf("start baseline asynq server: %w", err)
		}
		f.added = append(f.added, srv)
	}
	return nil
}

func (f *baselineFleet) stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.added {
		s.Shutdown()
	}
	return nil
}

// limiter is a per-process x/time/rate limiter holding 1/div of a
// per-minute limit and its burst (unlimited when perMinute is 0).
func limiter(perMinute, burst, div int64) *rate.Limiter {
	if perMinute == 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(float64(perMinute)/60/float64(div)), int(max(1, burst/div)))
}

// retryAfter is the baselines' asynq RetryDelayFunc: the server's
// Retry-After when it sent one, else asynq's default backoff.
func retryAfter(n int, err error, t *asynq.Task) time.Duration {
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.RetryAfter > 0 {
		return ue.RetryAfter
	}
	return asynq.DefaultRetryDelayFunc(n, err, t)
}

// plainHandler is the handler a user of plain asynq would write: wait for
// the process's own limiters, call the upstream, return its error.
type plainHandler struct {
	client     *upstream.Client
	est        *jobs.Estimator
	reqs, toks *rate.Limiter
}

// ProcessTask implements asynq.Handler.
func (h *plainHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	job, err := jobs.Decode(t.Payload())
	if err != nil {
		return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}
	req, err := job.Request()
	if err != nil {
		return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}
	if err := h.reqs.Wait(ctx); err != nil {
		return err
	}
	if err := h.toks.WaitN(ctx, min(h.est.Estimate(req).Total(), h.toks.Burst())); err != nil {
		return err
	}
	_, err = h.client.Chat(ctx, []byte(job.Body))
	return err
}
