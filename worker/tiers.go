package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/cache"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/upstream"
)

// The serving tiers of a job, in order: the primary model, its fallback
// models (the job's own list, else Config.Fallbacks for the model), the
// response cache (jobs with allow_cached), the static text (jobs with
// allow_static, or all jobs with Config.StaticForAll). A model tier is left
// for the next one when the failure policy says fallback or its breaker is
// open; when every tier is used up and one was skipped only because its
// breaker is open, the job waits for that breaker without burning an
// attempt.

// probePoll is how often a job waiting for another process's probe reads
// the breaker's state.
const probePoll = 100 * time.Millisecond

// initTiers builds the breaker and the cache from the Config.
func (w *Worker) initTiers() error {
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
		// Never cut a probe short: it owns the half-open period for as
		// long as a call may take.
		bc.ProbeLease = w.cfg.CallTimeout + 5*time.Second
	}
	bc.OnTransition = w.onBreakerTransition(bc.OnTransition)
	b, err := breaker.New(w.cfg.Redis, bc)
	if err != nil {
		return fmt.Errorf("worker: Config.Breaker: %w", err)
	}
	w.breaker = b
	w.cache = cache.New(w.cfg.Redis, w.cfg.Prefix, w.cfg.CacheTTL)
	return nil
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

// tiers returns the models to try for a job, primary first, without
// repeats.
func (w *Worker) tiers(primary string, job *jobs.Job) []string {
	fb := job.Fallback
	if len(fb) == 0 {
		fb = w.cfg.Fallbacks[primary]
	}
	out := []string{primary}
	for _, m := range fb {
		if m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// tierWalk remembers what happened to a job's model tiers in one run.
type tierWalk struct {
	decided bool      // a tier's verdict ended the walk (retry, dead letter, fallback with no tier left)
	skipped []string  // tiers skipped because their breaker is open
	retryAt time.Time // earliest instant a skipped tier's breaker may allow a call
}

// admit asks model's breaker whether a call may go now. A job refused
// while another process's probe is in flight waits up to ProbeWait for the
// probe's verdict: when it closes the breaker the job goes on at once.
func (w *Worker) admit(ctx context.Context, model string) (breaker.Permit, error) {
	p, err := w.breaker.Allow(ctx, model)
	if err != nil {
		return p, &delayError{delay: w.cfg.PollInterval, reason: "breaker state unreadable, waiting: " + err.Error()}
	}
	w.cfg.Metrics.BreakerState(model, string(p.State))
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

// skip notes that tiers[i] was refused by its breaker, or that this job's
// probe of it failed and reopened it (p then says open until the new
// interval ends).
func (wk *tierWalk) skip(w *Worker, r *run, p breaker.Permit, tiers []string, i int) {
	next := ""
	if i+1 < len(tiers) {
		next = tiers[i+1]
	}
	at := p.RetryAt
	if p.State == breaker.HalfOpen {
		// A probe is in flight: look again when it should have answered,
		// but no later than one open interval from now.
		if limit := w.now().Add(w.breaker.Config().Open); limit.Before(at) {
			at = limit
		}
	}
	if wk.retryAt.IsZero() || at.Before(wk.retryAt) {
		wk.retryAt = at
	}
	wk.skipped = append(wk.skipped, p.Model)
	ev := w.log.Info().Str("event", "breaker_skip").Str("job_id", r.job.ID).Str("model", p.Model).
		Str("state", string(p.State)).Time("retry_at", at)
	if next != "" {
		ev.Str("next_model", next).Msg("circuit breaker open: trying the next model tier")
		return
	}
	ev.Msg("circuit breaker open: no model tier left")
}

// settle tells the breaker how an allowed call went: a failure the policy
// counts (Verdict.Breaker), an answer (anything else), or nothing to say
// (the call was canceled by shutdown, or cut short by the job's own
// deadline: a tight deadline is not the upstream's fault).
func (w *Worker) settle(ctx context.Context, r *run, p breaker.Permit, v policy.Verdict) {
	o := breaker.Success
	switch {
	case v.Class == policy.ClassCanceled:
		o = breaker.Abandon
	case v.Breaker && !r.job.Deadline.IsZero() && !w.now().Before(r.job.Deadline):
		o = breaker.Abandon
	case v.Breaker:
		o = breaker.Failure
	}
	w.recordBreaker(ctx, p, o)
}

// recordBreaker records o even when ctx is ending (shutdown), so that a
// probe's lease is never left behind.
func (w *Worker) recordBreaker(ctx context.Context, p breaker.Permit, o breaker.Outcome) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.breaker.Record(rctx, p, o); err != nil {
		w.log.Warn().Err(err).Str("model", p.Model).Msg("could not record the call in the circuit breaker")
	}
}

// lastResort runs when no model tier served the job: every tier failed
// over (v.Outcome == Fallback) or was skipped by its open breaker. It
// serves the cached response or the static text when the job allows them,
// else waits for the earliest breaker (a snooze: no attempt burned), else
// applies v.Otherwise (retry or dead letter).
func (w *Worker) lastResort(ctx context.Context, r *run, primary string, wk *tierWalk, v policy.Verdict, resp *upstream.Response) error {
	if r.job.AllowCached {
		e, err := w.cache.Get(ctx, r.job.Body)
		switch {
		case err == nil:
			w.cfg.Metrics.CacheHit(primary)
			return w.serveStored(ctx, r, jobs.ServedByCache, e.Model, e.Body, e.RequestID)
		case !errors.Is(err, cache.ErrMiss):
			w.log.Warn().Err(err).Str("job_id", r.job.ID).Msg("response cache unreadable: trying the next tier")
		}
	}
	if w.cfg.StaticResponse != "" && (r.job.AllowStatic || w.cfg.StaticForAll) {
		body := cache.Static("chatcmpl-static-"+r.job.ID, primary, w.cfg.StaticResponse, w.now())
		return w.serveStored(ctx, r, jobs.ServedByStatic, primary, body, "")
	}
	if len(wk.skipped) > 0 {
		// Waiting for a breaker is a snooze, whatever the last call said.
		delay := max(wk.retryAt.Sub(w.now()), 0)
		return &delayError{delay: delay, reason: fmt.Sprintf("breaker: model tier(s) %v open; the job waits until %s (no attempt burned)",
			wk.skipped, wk.retryAt.UTC().Format(time.RFC3339Nano))}
	}
	v.Outcome = v.Otherwise
	if v.Outcome == policy.Retry {
		return w.retry(ctx, r, v, resp)
	}
	return w.deadLetter(ctx, r, v, resp)
}

// serveStored saves a success served without a call: from the cache or the
// static text. Nothing was billed, so usage is zero.
func (w *Worker) serveStored(ctx context.Context, r *run, served, model string, body json.RawMessage, requestID string) error {
	res := w.record(r, jobs.StatusSucceeded)
	res.Model = model
	res.ServedBy = served
	res.StatusCode = 200
	res.RequestID = requestID
	res.Response = body
	res.Usage = &jobs.Usage{}
	if err := w.saveSuccess(ctx, res); err != nil {
		return err
	}
	w.log.Warn().Str("event", "served").Str("job_id", r.job.ID).Str("batch_id", r.job.BatchID).Str("served_by", served).
		Msg("no model tier could serve the job: served by " + served)
	w.writeTaskResult(r, res)
	return nil
}

// remember caches a successful response for jobs that allow cached
// responses, keyed by the job's request (its primary model), whichever tier
// served it.
func (w *Worker) remember(ctx context.Context, r *run, resp *upstream.Response) {
	if !r.job.AllowCached {
		return
	}
	e := cache.Entry{Model: resp.Model, Body: json.RawMessage(resp.Body), RequestID: resp.RequestID, StoredAt: w.now()}
	if err := w.cache.Put(ctx, r.job.Body, e); err != nil {
		w.log.Warn().Err(err).Str("job_id", r.job.ID).Msg("could not cache the response")
	}
}
