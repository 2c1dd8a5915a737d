package producer

import (
	"slices"
	"time"

	"github.com/llmq/llmq/jobs"
)

// A job's asynq task timeout bounds one handler run. asynq cancels a run
// that outlasts it (and counts it as a failure), so it must leave room for
// every model tier the run may walk, each with a whole upstream call: a
// timeout derived from the workers' call timeout and fallback tiers never
// cuts a paid call short.
const (
	// DefaultCallTimeout is the workers' default upstream.call_timeout
	// (worker.DefaultCallTimeout; the producer does not import worker, whose
	// dependencies a service should not inherit — config's tests check the
	// two agree).
	DefaultCallTimeout = 10 * time.Minute
	// DefaultFallbackTiers is the number of fallback models assumed for a
	// job without a fallback list of its own when the workers'
	// configuration is not given (WithFallbackTiers): two, as llmq's fixed
	// 35-minute timeout assumed before it was derived.
	DefaultFallbackTiers = 2
	// TierMargin is each model tier's time beside its call: a blocking
	// budget wait (at most the workers' budget_max_wait), a wait for the
	// breaker's probe, and the 401 answered before a key refresh.
	TierMargin = time.Minute
	// RunMargin is a run's time beside its tiers: the gate's reads, the
	// cached-response and static tiers, and storing the result (workers
	// retry a save for up to 30 s while Redis is away).
	RunMargin = time.Minute
)

// TaskTimeout returns the asynq task timeout of a job that may walk tiers
// model tiers (the primary model and its fallbacks) with calls of at most
// callTimeout each: tiers × (callTimeout + TierMargin) + RunMargin. With
// the defaults, one tier gives 12 minutes and three give 34.
func TaskTimeout(callTimeout time.Duration, tiers int) time.Duration {
	return time.Duration(max(tiers, 1))*(callTimeout+TierMargin) + RunMargin
}

// WithCallTimeout sets the workers' upstream call timeout (their
// upstream.call_timeout; default DefaultCallTimeout), from which each
// job's task timeout is derived (TaskTimeout).
func WithCallTimeout(d time.Duration) Option { return func(o *options) { o.callTimeout = d } }

// WithFallbackTiers sets how many fallback models the workers may try for
// a job that names none of its own: the longest list of their
// configuration's fallbacks (default DefaultFallbackTiers). A job's own
// fallback list counts instead when it has one.
func WithFallbackTiers(n int) Option { return func(o *options) { o.fallbackTiers = n } }

// taskTimeout returns the task timeout of job: its tiers are the primary
// model and its own fallback list, or the configured fallback tiers.
func (p *Producer) taskTimeout(job *jobs.Job) time.Duration {
	fallbacks := p.o.fallbackTiers
	if len(job.Fallback) > 0 {
		fallbacks = distinct(job.Fallback)
	}
	return TaskTimeout(p.o.callTimeout, 1+fallbacks)
}

// distinct counts the distinct non-empty names of list, as the worker
// counts a job's fallback tiers (at least as many: it also leaves out the
// primary model).
func distinct(list []string) int {
	n := 0
	for i, m := range list {
		if m != "" && !slices.Contains(list[:i], m) {
			n++
		}
	}
	return n
}
