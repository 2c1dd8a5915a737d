package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
	// tier can (default cache.DefaultTTL, 24h).
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
}

// Defaults of Config's zero values. The prefix and account are the
// budget's, which every package keying Redis by them shares.
const (
	DefaultPrefix          = ratelimit.DefaultPrefix
	DefaultAccount         = ratelimit.DefaultAccount
	DefaultQueue           = "llmq"
	DefaultConcurrency     = 16
	DefaultShutdownTimeout = 30 * time.Second
	DefaultPollInterval    = time.Second
	DefaultHoldRecheck     = 30 * time.Second
	DefaultCallTimeout     = 10 * time.Minute
	DefaultSaveGrace       = 30 * time.Second
	DefaultResultTTL       = 7 * 24 * time.Hour
	// DefaultMaxTokens is the completion estimate per choice for jobs
	// without max_tokens (Config.DefaultMaxTokens).
	DefaultMaxTokens = 1024
	DefaultProbeWait = 2 * time.Second
)

// Retry delays while a result cannot be stored (Redis away), within
// SaveGrace.
const (
	saveRetryMin = 50 * time.Millisecond
	saveRetryMax = 2 * time.Second
)

// New checks cfg, fills defaults and returns a Worker.
func New(cfg Config) (*Worker, error) {
	switch {
	case cfg.Redis == nil:
		return nil, errors.New("worker: Config.Redis is required")
	case cfg.Upstream == nil:
		return nil, errors.New("worker: Config.Upstream is required")
	}
	orString(&cfg.Prefix, DefaultPrefix)
	orString(&cfg.Account, DefaultAccount)
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if len(cfg.Queues) == 0 {
		cfg.Queues = map[string]int{DefaultQueue: 1}
	}
	orDuration(&cfg.ShutdownTimeout, DefaultShutdownTimeout)
	orDuration(&cfg.PollInterval, DefaultPollInterval)
	orDuration(&cfg.HoldRecheck, DefaultHoldRecheck)
	orDuration(&cfg.CallTimeout, DefaultCallTimeout)
	orDuration(&cfg.SaveGrace, DefaultSaveGrace)
	orDuration(&cfg.ResultTTL, DefaultResultTTL)
	if cfg.DefaultMaxTokens <= 0 {
		cfg.DefaultMaxTokens = DefaultMaxTokens
	}
	if cfg.ProbeWait == 0 {
		cfg.ProbeWait = DefaultProbeWait
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := policy.DefaultPolicy()
	if cfg.Policy != nil {
		p = cfg.Policy.WithDefaults()
	}
	w := &Worker{
		cfg:     cfg,
		policy:  p,
		results: results.NewStore(cfg.Redis, cfg.Prefix, cfg.ResultTTL),
		holds:   hold.NewStore(cfg.Redis, cfg.Prefix),
		est:     jobs.NewEstimator(cfg.DefaultMaxTokens, jobs.WithMethod(cmp.Or(cfg.EstimateMethod, jobs.DefaultMethod))),
		log:     cfg.Log,
		now:     cfg.Now,
		cache:   cache.New(cfg.Redis, cfg.Prefix, cfg.CacheTTL),
	}
	b, err := w.newBreaker()
	if err != nil {
		return nil, err
	}
	w.breaker = b
	return w, nil
}

func orString(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

func orDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
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

// handler returns the worker as an asynq.Handler that counts every run's
// outcome in Config.Metrics (llmq_jobs_total, llmq_retries_total).
func (w *Worker) handler() asynq.Handler {
	if w.cfg.Metrics == nil {
		return w
	}
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		err := w.ProcessTask(ctx, t)
		w.cfg.Metrics.Job(jobOutcome(err))
		return err
	})
}

// Run serves jobs until ctx ends, then shuts down gracefully: in-flight jobs
// get ShutdownTimeout to finish, the rest return to the queue.
func (w *Worker) Run(ctx context.Context) error {
	srv := w.Server()
	// Every task of the worker's queues reaches the handler, which
	// dead-letters foreign task types at once instead of retrying them.
	if err := srv.Start(w.handler()); err != nil {
		return fmt.Errorf("worker: start asynq server: %w", err)
	}
	w.log.Info().Int("concurrency", w.cfg.Concurrency).Interface("queues", w.cfg.Queues).Msg("worker started")
	<-ctx.Done()
	w.log.Info().Dur("shutdown_timeout", w.cfg.ShutdownTimeout).Msg("worker stopping: in-flight jobs finish or return to the queue")
	srv.Shutdown()
	w.log.Info().Msg("worker stopped")
	return nil
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
