package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/cache"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/ratelimit"
	"github.com/llmq/llmq/results"
	"github.com/llmq/llmq/upstream"
)

// Completer is what the worker needs of an upstream: one chat-completions
// call. *upstream.Client implements it.
type Completer interface {
	Chat(ctx context.Context, body []byte) (*upstream.Response, error)
}

// Config configures a Worker. Fields marked required must be set; the rest
// have the documented defaults.
type Config struct {
	// Redis is the Redis asynq and llmq's records live in. Required.
	Redis redis.UniversalClient
	// Upstream is called for every attempt. Required.
	Upstream Completer
	// Keys is the upstream's API key source: on a 401 the worker refreshes
	// it once before holding the fleet, and a changed key fingerprint lifts
	// a hold. Optional.
	Keys upstream.KeySource
	// Limiter is the fleet-wide budget; nil means unlimited.
	Limiter *ratelimit.Limiter
	// Prefix namespaces llmq's keys (default "llmq").
	Prefix string
	// Account names the upstream account whose hold state the fleet shares
	// (default "default").
	Account string
	// Concurrency is the number of jobs run at once (default 16).
	Concurrency int
	// Queues maps asynq queue names to priorities (default {"llmq": 1}).
	Queues map[string]int
	// ShutdownTimeout is how long in-flight jobs may finish after a stop
	// signal before they go back to the queue (default 30s).
	ShutdownTimeout time.Duration
	// PollInterval is how often delayed and retried tasks become pending
	// (default 1s).
	PollInterval time.Duration
	// Policy is the failure policy (default policy.DefaultPolicy()).
	Policy *policy.Policy
	// HoldRecheck is how long a job waits before looking again while the
	// fleet is on hold (default 30s).
	HoldRecheck time.Duration
	// CallTimeout bounds one upstream call (default 10m).
	CallTimeout time.Duration
	// SaveGrace is how long the worker keeps trying to store a paid-for
	// response while Redis is unreachable before it gives the job back to
	// the queue (default 30s).
	SaveGrace time.Duration
	// ResultTTL is how long result records live (default 7 days).
	ResultTTL time.Duration
	// DefaultMaxTokens is the completion estimate for jobs without
	// max_tokens (default 1024).
	DefaultMaxTokens int
	// EstimateMethod is how a job's prompt is charged to the budget
	// (default jobs.DefaultMethod).
	EstimateMethod jobs.Method
	// Log receives one event per upstream call and every state change.
	Log zerolog.Logger
	// Metrics receives the job's path as Prometheus metrics (upstream calls,
	// tokens, budget waits, 429s, holds, job outcomes). Optional: nil
	// records nothing.
	Metrics *metrics.Metrics
	// Breaker configures the per-model circuit breaker the fleet shares in
	// Redis (zero value: 5 failures in a rolling 60 s open it for 30 s, then
	// one probe). Unset Prefix, Scope, Now and ProbeLease default to
	// Prefix, Account, Now and CallTimeout + 5 s; OnTransition, when set, is
	// called after the worker has logged the change and counted it in
	// Metrics.
	Breaker breaker.Config
	// ProbeWait is how long a job refused while another process's probe is
	// in flight waits in the handler for the probe's verdict before it is
	// rescheduled (default 2s; negative: do not wait).
	ProbeWait time.Duration
	// Fallbacks maps a model to the models to try, in order, when it
	// cannot serve a job (failure policy outcome fallback, or its breaker
	// open). A job's own fallback list wins. Optional.
	Fallbacks map[string][]string
	// CacheTTL is how long the responses of jobs that set allow_cached are
	// cached, to serve a later job with the same request when no model
	// tier can (default 24h).
	CacheTTL time.Duration
	// StaticResponse is the static tier's text, served as a chat.completion
	// when nothing else can serve a job that set allow_static. "" (the
	// default) disables the tier.
	StaticResponse string
	// StaticForAll lets the static text serve every job, not only those
	// that set allow_static (default false).
	StaticForAll bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Worker runs jobs. Create it with New.
type Worker struct {
	cfg     Config
	policy  policy.Policy
	results *results.Store
	holds   *hold.Store
	est     *jobs.Estimator
	log     zerolog.Logger
	now     func() time.Time
	breaker *breaker.Breaker
	cache   *cache.Cache

	mu  sync.Mutex
	rnd *rand.Rand
}

// New checks cfg, fills defaults and returns a Worker.
func New(cfg Config) (*Worker, error) {
	switch {
	case cfg.Redis == nil:
		return nil, errors.New("worker: Config.Redis is required")
	case cfg.Upstream == nil:
		return nil, errors.New("worker: Config.Upstream is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "llmq"
	}
	if cfg.Account == "" {
		cfg.Account = "default"
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if len(cfg.Queues) == 0 {
		cfg.Queues = map[string]int{"llmq": 1}
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.HoldRecheck <= 0 {
		cfg.HoldRecheck = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Minute
	}
	if cfg.SaveGrace <= 0 {
		cfg.SaveGrace = 30 * time.Second
	}
	if cfg.ResultTTL <= 0 {
		cfg.ResultTTL = 7 * 24 * time.Hour
	}
	if cfg.DefaultMaxTokens <= 0 {
		cfg.DefaultMaxTokens = 1024
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := policy.DefaultPolicy()
	if cfg.Policy != nil {
		p = cfg.Policy.WithDefaults()
	}
	if cfg.ProbeWait == 0 {
		cfg.ProbeWait = 2 * time.Second
	}
	w := &Worker{
		cfg:     cfg,
		policy:  p,
		results: results.NewStore(cfg.Redis, cfg.Prefix, cfg.ResultTTL),
		holds:   hold.NewStore(cfg.Redis, cfg.Prefix),
		est:     jobs.NewEstimator(cfg.DefaultMaxTokens, jobs.WithMethod(cmp.Or(cfg.EstimateMethod, jobs.DefaultMethod))),
		log:     cfg.Log,
		now:     cfg.Now,
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	if err := w.initTiers(); err != nil {
		return nil, err
	}
	return w, nil
}

// Server returns an asynq server configured for llmq's failure policy:
// snoozes do not count as failures, retry delays come from the handler's
// verdict.
func (w *Worker) Server() *asynq.Server {
	return asynq.NewServerFromRedisClient(w.cfg.Redis, asynq.Config{
		Concurrency:              w.cfg.Concurrency,
		Queues:                   w.cfg.Queues,
		ShutdownTimeout:          w.cfg.ShutdownTimeout,
		DelayedTaskCheckInterval: w.cfg.PollInterval,
		// Idle workers look for new tasks as often too (asynq's default
		// is a random sleep of up to 1 s, which delays and bunches jobs).
		TaskCheckInterval: w.cfg.PollInterval,
		IsFailure:         isFailure,
		RetryDelayFunc:    w.retryDelay,
		ErrorHandler:      asynq.ErrorHandlerFunc(w.onFailure),
		Logger:            asynqLogger{w.log},
		LogLevel:          asynq.WarnLevel,
	})
}

// Run serves jobs until ctx ends, then shuts down gracefully: in-flight jobs
// get ShutdownTimeout to finish, the rest return to the queue.
func (w *Worker) Run(ctx context.Context) error {
	srv := w.Server()
	// Every task of the worker's queues reaches the handler, which
	// dead-letters foreign task types at once instead of retrying them.
	if err := srv.Start(w.instrumented()); err != nil {
		return fmt.Errorf("worker: start asynq server: %w", err)
	}
	w.log.Info().Int("concurrency", w.cfg.Concurrency).Interface("queues", w.cfg.Queues).Msg("worker started")
	<-ctx.Done()
	w.log.Info().Dur("shutdown_timeout", w.cfg.ShutdownTimeout).Msg("worker stopping: in-flight jobs finish or return to the queue")
	srv.Shutdown()
	w.log.Info().Msg("worker stopped")
	return nil
}

// onFailure is asynq's ErrorHandler: it runs for every handler error before
// asynq acts on it. When asynq is about to archive the task on its own (its
// retry count is spent, which the worker's own accounting avoids but a
// crash during a last attempt can cause) and the handler did not
// dead-letter it, the failure is stored so the job has its result and its
// batch can finish.
func (w *Worker) onFailure(ctx context.Context, t *asynq.Task, err error) {
	var dl *deadLetter
	if errors.As(err, &dl) || errors.Is(err, asynq.RevokeTask) {
		return
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, ok := asynq.GetMaxRetry(ctx)
	if !ok || retried < maxRetry {
		return
	}
	job, derr := jobs.Decode(t.Payload())
	if derr != nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r := &run{job: job, task: t, retried: retried, attempt: retried + 1, started: w.now(), lastErr: err}
	w.saveFailure(sctx, r, policy.Verdict{Outcome: policy.DeadLetter, Class: "exhausted",
		Reason: fmt.Sprintf("asynq retries exhausted (%d of %d): %v", retried, maxRetry, err)}, nil)
	w.log.Error().Str("event", "dead_letter").Str("job_id", job.ID).Str("batch_id", job.BatchID).Msg("asynq archives the job: " + err.Error())
}

// isFailure is asynq's IsFailure: snoozes (rate limited, hold, budget wait)
// do not count.
func isFailure(err error) bool {
	var d *delayError
	if errors.As(err, &d) {
		return d.failure
	}
	return true
}

// retryDelay is asynq's RetryDelayFunc: the delay the handler decided, or
// the policy's backoff for errors that carry none, rounded up to asynq's
// clock (see roundUpToSecond).
func (w *Worker) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var d *delayError
	if errors.As(err, &d) {
		return roundUpToSecond(w.now(), d.delay)
	}
	return roundUpToSecond(w.now(), w.backoff(n))
}

// roundUpToSecond stretches d so that now+d falls on a whole second. asynq
// stores a retry's time as Unix seconds (rdb.Retry: processAt.Unix()) and
// runs the task once that second has begun, so a delay ending mid-second
// would run up to a second early and undercut a server's Retry-After. The
// price is up to one second of extra delay on each retry.
func roundUpToSecond(now time.Time, d time.Duration) time.Duration {
	target := now.Add(d)
	if whole := target.Truncate(time.Second); !whole.Equal(target) {
		target = whole.Add(time.Second)
	}
	return target.Sub(now)
}

func (w *Worker) backoff(n int) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.policy.Backoff(n, w.rnd)
}

func (w *Worker) retryDelayFor(n int, v policy.Verdict) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.policy.RetryDelay(n, v, w.rnd)
}

// asynqLogger adapts zerolog to asynq's Logger.
type asynqLogger struct{ l zerolog.Logger }

func (a asynqLogger) Debug(args ...any) {
	a.l.Debug().Str("component", "asynq").Msg(fmt.Sprint(args...))
}
func (a asynqLogger) Info(args ...any) { a.l.Info().Str("component", "asynq").Msg(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any) { a.l.Warn().Str("component", "asynq").Msg(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) {
	a.l.Error().Str("component", "asynq").Msg(fmt.Sprint(args...))
}
func (a asynqLogger) Fatal(args ...any) {
	a.l.Fatal().Str("component", "asynq").Msg(fmt.Sprint(args...))
}
