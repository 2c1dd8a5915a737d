package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/results"
	"github.com/redis/go-redis/v9"
)

// probePoll is how often a job waiting for another process's probe reads
// the breaker's state.
const probePoll = 100 * time.Millisecond

// breakerRecordTimeout bounds recording a call's outcome in the breaker,
// which is done even while the worker stops.
const breakerRecordTimeout = 5 * time.Second

// probeLeaseSlack is added to CallTimeout for the breaker's probe lease:
// a probe is never cut short while its call may still be running.
const probeLeaseSlack = 5 * time.Second

// probeCountTTL is how long a job's count of free failed probes lives.
const probeCountTTL = 24 * time.Hour

// newBreaker builds the fleet's breaker from the Config.
func (w *Worker) newBreaker() (*breaker.Breaker, error) {
	bc := w.cfg.Breaker
	if bc.Prefix == "" {
		bc.Prefix = w.cfg.Prefix
	}
	if bc.Scope == "" {
		bc.Scope = w.cfg.Account
	}
	if bc.Now == nil {
		bc.Now = w.cfg.Now
	}
	if bc.ProbeLease == 0 {
		bc.ProbeLease = w.cfg.CallTimeout + probeLeaseSlack
	}
	bc.OnTransition = w.onBreakerTransition(bc.OnTransition)
	b, err := breaker.New(w.cfg.Redis, bc)
	if err != nil {
		return nil, fmt.Errorf("worker: Config.Breaker: %w", err)
	}
	return b, nil
}

// Breaker returns the worker's fleet-wide circuit breaker (for status and
// metrics).
func (w *Worker) Breaker() *breaker.Breaker { return w.breaker }

// onBreakerTransition logs a breaker's state change, counts it in Metrics,
// then calls next (the configured hook) if any.
func (w *Worker) onBreakerTransition(next func(model string, from, to breaker.State)) func(model string, from, to breaker.State) {
	return func(model string, from, to breaker.State) {
		ev := w.log.Warn()
		msg := "circuit breaker opened: no calls to this model until its probe"
		switch to {
		case breaker.Closed:
			ev, msg = w.log.Info(), "circuit breaker closed: the probe succeeded; calls resume"
		case breaker.HalfOpen:
			ev, msg = w.log.Info(), "circuit breaker half-open: this worker probes the model"
		}
		if from == breaker.HalfOpen && to == breaker.Open {
			msg = "circuit breaker reopened: the probe failed"
		}
		ev.Str("event", "breaker").Str("model", model).Str("from", string(from)).Str("to", string(to)).Msg(msg)
		w.cfg.Metrics.BreakerTransition(model, string(from), string(to))
		if next != nil {
			next(model, from, to)
		}
	}
}

// admit asks model's breaker whether a call may go now; for the primary
// model the gate's read has usually settled it already (closed). A job
// refused while another process's probe is in flight waits up to ProbeWait
// for the probe's verdict: when it closes the breaker the job goes on at
// once. A verdict is returned when the breaker cannot be read.
func (w *Worker) admit(ctx context.Context, a *attempt, tier int, model string) (breaker.Permit, *verdict) {
	if tier == 0 && a.permitRead {
		a.permitRead = false // one call per read: a second call asks again
		return a.permit, nil
	}
	p, err := w.breaker.Allow(ctx, model)
	if err != nil {
		return p, snoozeFor(w.cfg.PollInterval, "breaker state unreadable, waiting: "+err.Error())
	}
	if p.State != breaker.Closed {
		w.cfg.Metrics.BreakerState(model, string(p.State))
	}
	if p.Allowed || p.State != breaker.HalfOpen || w.cfg.ProbeWait <= 0 {
		return p, nil
	}
	st, err := w.breaker.Await(ctx, model, w.cfg.ProbeWait, probePoll)
	switch {
	case err != nil:
		return p, nil // keep the refusal; the job is rescheduled
	case st.State == breaker.Closed, st.State == breaker.HalfOpen && st.ProbeUntil.IsZero():
		// Closed, or the probe gave its lease back: ask again (this job
		// may become the probe).
		if again, err := w.breaker.Allow(ctx, model); err == nil {
			return again, nil
		}
	case st.State == breaker.Open:
		p.State, p.RetryAt = breaker.Open, st.OpenUntil
	}
	return p, nil
}

// skipped remembers the model tiers of one run that their breaker refused.
type skipped struct {
	models  []string
	retryAt time.Time // earliest instant a skipped tier's breaker may allow a call
}

// add notes that p's model was refused by its breaker, or that this job's
// probe of it failed and reopened it (p then says open until the new
// interval ends).
func (s *skipped) add(w *Worker, a *attempt, p breaker.Permit) {
	at := p.RetryAt
	if p.State == breaker.HalfOpen {
		// A probe is in flight: look again when it should have answered,
		// but no later than one open interval from now.
		if limit := w.now().Add(w.breaker.Config().Open); limit.Before(at) {
			at = limit
		}
	}
	if s.retryAt.IsZero() || at.Before(s.retryAt) {
		s.retryAt = at
	}
	s.models = append(s.models, p.Model)
	w.log.Info().Str("event", "breaker_skip").Str("job_id", a.job.ID).Str("model", p.Model).
		Str("state", string(p.State)).Time("retry_at", at).Msg("circuit breaker open: model tier skipped")
}

// wait is the snooze until the earliest skipped breaker may allow a call.
func (s *skipped) wait(now time.Time) *verdict {
	return snoozeFor(s.retryAt.Sub(now), fmt.Sprintf("breaker: model tier(s) %v open; the job waits until %s (no attempt burned)",
		s.models, s.retryAt.UTC().Format(time.RFC3339Nano)))
}

// settle tells the breaker how an allowed call went: a failure the policy
// counts (Verdict.Breaker), an answer (anything else), or nothing to say
// (the call was canceled by shutdown, or cut short by the job's own
// deadline: a tight deadline is not the upstream's fault).
func (w *Worker) settle(ctx context.Context, a *attempt, p breaker.Permit, v policy.Verdict) {
	o := breaker.Success
	switch {
	case v.Class == policy.ClassCanceled:
		o = breaker.Abandon
	case v.Breaker && !a.job.Deadline.IsZero() && !w.now().Before(a.job.Deadline):
		o = breaker.Abandon
	case v.Breaker:
		o = breaker.Failure
	}
	if o == breaker.Success {
		a.answered = p
	}
	w.recordBreaker(ctx, p, o)
}

// breakerSuccess returns the save option that records, in the save's round
// trip, the success of the call whose answer the result stores, so that it
// ends the fleet's failures in a row even when this process saw none.
func (w *Worker) breakerSuccess(ctx context.Context, a *attempt) (results.SaveOption, func()) {
	after := func() {}
	return results.With(func(pipe redis.Pipeliner, _ []byte) {
		after = w.breaker.SuccessIn(ctx, pipe, a.answered)
	}), func() { after() }
}

// recordBreaker records o even when ctx is ending (shutdown), so that a
// probe's lease is never left behind.
func (w *Worker) recordBreaker(ctx context.Context, p breaker.Permit, o breaker.Outcome) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), breakerRecordTimeout)
	defer cancel()
	if err := w.breaker.Record(rctx, p, o); err != nil {
		w.log.Warn().Err(err).Str("model", p.Model).Msg("could not record the call in the circuit breaker")
	}
}

// freeProbe reports whether this job's failed probe may go without burning
// an attempt. Each job gets as many free failed probes as it has attempts;
// after that its probes count like any other failed call, so a job that
// always fails cannot keep a model's breaker probing (and paying) forever.
func (w *Worker) freeProbe(ctx context.Context, a *attempt) bool {
	key := w.cfg.Prefix + ":probes:" + a.job.ID
	pipe := w.cfg.Redis.TxPipeline()
	n := pipe.Incr(ctx, key)
	pipe.Expire(ctx, key, probeCountTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return false
	}
	return int(n.Val()) <= a.max
}
