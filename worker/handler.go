package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/ratelimit"
	"github.com/llmq/llmq/results"
	"github.com/llmq/llmq/upstream"
)

// run is one handler invocation of one job.
type run struct {
	job      *jobs.Job
	task     *asynq.Task
	retried  int // failed attempts before this one
	attempt  int // 1-based attempt number
	max      int // attempts allowed
	started  time.Time
	refreshd bool   // the key was refreshed after a 401 in this run
	callKey  string // fingerprint of the API key the last call used
	lastErr  error  // the last upstream call's error
}

// ProcessTask runs one job; it implements asynq.Handler. Its error tells
// asynq what to do: nil (done), *delayError (run again later, as a failure
// or a snooze), or *deadLetter (archive now).
func (w *Worker) ProcessTask(ctx context.Context, t *asynq.Task) error {
	id, _ := asynq.GetTaskID(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	if t.Type() != jobs.TaskType {
		reason := fmt.Sprintf("unknown task type %q in an llmq queue: llmq workers run %q tasks only", t.Type(), jobs.TaskType)
		w.log.Error().Str("job_id", id).Str("outcome", string(policy.DeadLetter)).Msg(reason)
		return &deadLetter{reason: reason}
	}
	job, err := jobs.Decode(t.Payload())
	if err != nil {
		reason := fmt.Sprintf("undecodable payload (%d bytes): %v", len(t.Payload()), err)
		w.log.Error().Str("job_id", id).Str("outcome", string(policy.DeadLetter)).Msg(reason)
		w.saveFailure(ctx, &run{job: &jobs.Job{ID: id}, started: w.now()}, policy.Verdict{Outcome: policy.DeadLetter, Class: "invalid_payload", Reason: reason}, nil)
		return &deadLetter{reason: reason}
	}
	r := &run{job: job, task: t, retried: retried, attempt: retried + 1, max: w.policy.Attempts, started: w.now()}
	if job.MaxAttempts > 0 {
		r.max = job.MaxAttempts
	}
	// At-least-once delivery: a job redelivered after a crash may already
	// have its result. Do not pay for it twice.
	if prev, err := w.results.Get(ctx, job.ID); err == nil && prev.Status == jobs.StatusSucceeded {
		w.log.Info().Str("job_id", job.ID).Msg("job already has a result: redelivery skipped")
		if job.BatchID != "" {
			// The crash may have come between storing and counting.
			if err := w.results.Count(ctx, job.BatchID, job.ID, jobs.StatusSucceeded); err != nil {
				return &delayError{delay: w.cfg.PollInterval, reason: err.Error()}
			}
		}
		return nil
	}
	if !job.Deadline.IsZero() && !w.now().Before(job.Deadline) {
		return w.deadLetter(ctx, r, policy.Verdict{Outcome: policy.DeadLetter, Class: "deadline",
			Reason: fmt.Sprintf("deadline %s passed before attempt %d", job.Deadline.UTC().Format(time.RFC3339), r.attempt)}, nil)
	}
	if err := w.holdGate(ctx); err != nil {
		return err
	}
	req, err := job.Request()
	if err != nil {
		return w.deadLetter(ctx, r, policy.Verdict{Outcome: policy.DeadLetter, Class: "invalid_payload", Reason: err.Error()}, nil)
	}
	primary := req.Model
	tiers := w.tiers(primary, job)
	var (
		v    policy.Verdict
		resp *upstream.Response
		walk tierWalk // breaker skips, for lastResort
	)
	for i := 0; i < len(tiers); i++ {
		model := tiers[i]
		body := []byte(job.Body)
		if i > 0 {
			if body, err = jobs.WithModel(job.Body, model); err != nil {
				return w.deadLetter(ctx, r, policy.Verdict{Outcome: policy.DeadLetter, Class: "invalid_payload", Reason: err.Error()}, nil)
			}
			req.Model = model
		}
		permit, err := w.admit(ctx, model)
		if err != nil {
			return err
		}
		if !permit.Allowed {
			walk.skip(w, r, permit, tiers, i)
			continue
		}
		grant, err := w.acquire(ctx, r, model, req)
		if err != nil {
			w.recordBreaker(ctx, permit, breaker.Abandon)
			return err
		}
		resp, v = w.call(ctx, r, model, i, body)
		w.settle(ctx, r, permit, v)
		w.reconcile(ctx, r, grant, resp)
		if permit.Probe && v.Breaker && w.freeProbe(ctx, r) {
			// The probe failed and reopened the breaker: the outage, not
			// the job, is to blame, so no attempt is burned.
			walk.skip(w, r, breaker.Permit{Model: model, State: breaker.Open, RetryAt: w.now().Add(w.breaker.Config().Open)}, tiers, i)
			continue
		}
		switch v.Outcome {
		case policy.OK:
			return w.succeed(ctx, r, model, i, resp)
		case policy.RateLimited:
			return w.rateLimited(ctx, r, model, v)
		case policy.Hold:
			if v.Class == "auth" && !r.refreshd && w.cfg.Keys != nil {
				r.refreshd = true
				changed, err := w.cfg.Keys.Refresh()
				// The key may also have changed while the call was in
				// flight (another job re-read the file): then this 401
				// speaks of the old key, not of the one now in use.
				if err == nil && (changed || w.cfg.Keys.Fingerprint() != r.callKey) {
					w.log.Warn().Str("job_id", job.ID).Msg("upstream 401: API key changed at its source; trying the new key")
					i-- // same tier, new key
					continue
				}
			}
			return w.hold(ctx, r, v)
		case policy.Fallback:
			if i+1 < len(tiers) {
				w.log.Warn().Str("job_id", job.ID).Str("model", model).Str("next_model", tiers[i+1]).Str("class", v.Class).Msg("falling back to the next model tier")
				continue
			}
		}
		walk.decided = true
		break
	}
	if v.Outcome == policy.Fallback || !walk.decided {
		// Every model tier failed over or was skipped by its breaker.
		return w.lastResort(ctx, r, primary, &walk, v, resp)
	}
	switch v.Outcome {
	case policy.Retry:
		return w.retry(ctx, r, v, resp)
	default:
		return w.deadLetter(ctx, r, v, resp)
	}
}

// freeProbe reports whether this job's failed probe may go without burning
// an attempt. Each job gets as many free failed probes as it has attempts;
// after that its probes count like any other failed call, so a job that
// always fails cannot keep a model's breaker probing (and paying) forever.
func (w *Worker) freeProbe(ctx context.Context, r *run) bool {
	key := w.cfg.Prefix + ":probes:" + r.job.ID
	pipe := w.cfg.Redis.TxPipeline()
	n := pipe.Incr(ctx, key)
	pipe.Expire(ctx, key, 24*time.Hour)
	if _, err := pipe.Exec(ctx); err != nil {
		return false
	}
	return int(n.Val()) <= r.max
}

// holdGate returns a snooze while the account is on hold, and lifts the hold
// when this worker's key differs from the one that failed.
func (w *Worker) holdGate(ctx context.Context) error {
	st, err := w.holds.Get(ctx, w.cfg.Account)
	if err != nil {
		return &delayError{delay: w.cfg.PollInterval, reason: "hold state unreadable, waiting: " + err.Error()}
	}
	if st == nil {
		w.cfg.Metrics.HoldLifted(w.cfg.Account)
		return nil
	}
	w.cfg.Metrics.HoldActive(w.cfg.Account, st.Class)
	if w.cfg.Keys != nil {
		if _, err := w.cfg.Keys.Key(); err == nil && w.cfg.Keys.Fingerprint() != st.KeyFingerprint {
			if lifted, err := w.holds.ClearIf(ctx, w.cfg.Account, st.KeyFingerprint); err == nil && lifted {
				w.cfg.Metrics.HoldLifted(w.cfg.Account)
				w.log.Warn().Str("account", w.cfg.Account).Str("class", st.Class).Msg("hold lifted: the API key changed; upstream calls resume")
			}
			return nil
		}
	}
	return &delayError{delay: w.cfg.HoldRecheck, reason: fmt.Sprintf("hold: account %q is on hold since %s (%s): %s; fix the key or quota, then `llmq resume`",
		st.Account, st.Since.UTC().Format(time.RFC3339), st.Class, st.Reason)}
}

// acquire takes the job's cost from the fleet-wide budget. Short waits
// block; longer ones snooze the job; a job larger than the budget itself is
// dead-lettered.
func (w *Worker) acquire(ctx context.Context, r *run, model string, req *jobs.Request) (*ratelimit.Reservation, error) {
	if w.cfg.Limiter == nil {
		return nil, nil
	}
	cost := w.est.Estimate(req)
	waitStart := w.now()
	res, err := w.cfg.Limiter.Acquire(ctx, model, ratelimit.Cost{Requests: 1, Tokens: int64(cost.Total())})
	var we *ratelimit.WaitError
	switch {
	case err == nil:
		w.cfg.Metrics.BudgetWait(model, w.now().Sub(waitStart))
		w.cfg.Metrics.Tokens(model, metrics.TokensEstimated, cost.Total())
		return &res, nil
	case errors.As(err, &we):
		return nil, &delayError{delay: max(we.Until.Sub(w.now()), 0), reason: "budget: waiting for " + model + " budget: " + err.Error()}
	case errors.Is(err, ratelimit.ErrTooLarge):
		return nil, w.deadLetter(ctx, r, policy.Verdict{Outcome: policy.DeadLetter, Class: "too_large", Reason: err.Error()}, nil)
	case errors.Is(err, ratelimit.ErrNoBudget):
		// A configuration fault, not the job's: keep the job and say so.
		w.log.Error().Str("event", "no_budget").Str("model", model).Err(err).Msg("no budget configured for this model: its jobs wait; add budgets." + model + " or budgets.default and restart the workers")
		return nil, &delayError{delay: w.cfg.HoldRecheck, reason: "budget: " + err.Error()}
	default:
		// Context ended (shutdown): asynq puts the job back.
		return nil, fmt.Errorf("budget for %s: %w", model, err)
	}
}

// call makes one upstream call and classifies its answer, logging one event.
func (w *Worker) call(ctx context.Context, r *run, model string, tier int, body []byte) (*upstream.Response, policy.Verdict) {
	// One call is bounded by CallTimeout and by the job's own deadline.
	cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
	defer cancel()
	if !r.job.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		cctx, cancelDeadline = context.WithDeadline(cctx, r.job.Deadline)
		defer cancelDeadline()
	}
	if w.cfg.Keys != nil {
		_, _ = w.cfg.Keys.Key() // re-read a changed key file first, as the client will
		r.callKey = w.cfg.Keys.Fingerprint()
	}
	start := w.now()
	resp, err := w.cfg.Upstream.Chat(cctx, body)
	latency := w.now().Sub(start)
	r.lastErr = err
	v := w.policy.Classify(resp, err)
	w.observeCall(model, resp, err, v, latency)
	ev := w.log.Info()
	if v.Outcome != policy.OK {
		ev = w.log.Warn()
	}
	ev = ev.Str("event", "upstream_call").Str("endpoint", "/chat/completions").Str("method", "POST").
		Str("job_id", r.job.ID).Str("batch_id", r.job.BatchID).Int("attempt", r.attempt).Int("max_attempts", r.max).
		Str("model", model).Int("tier", tier).Int("payload_bytes", len(body)).Dur("latency", latency).
		Str("class", v.Class).Str("outcome", string(v.Outcome))
	if resp != nil {
		ev = ev.Int("status", resp.StatusCode).Str("request_id", resp.RequestID)
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		ev = ev.Int("status", ue.StatusCode).Str("request_id", ue.RequestID)
	}
	if err != nil {
		ev = ev.Str("error", err.Error())
	}
	ev.Msg("upstream call")
	return resp, v
}

// reconcile tells the budget what the call really cost and what the server
// says is left. A call without a completion (a 429, an error answer, no
// answer) was not charged by the provider: its error's x-ratelimit-*
// headers are still the provider's view.
func (w *Worker) reconcile(ctx context.Context, r *run, grant *ratelimit.Reservation, resp *upstream.Response) {
	if grant == nil || w.cfg.Limiter == nil {
		return
	}
	actual := int64(-1) // unknown: nothing is refunded
	view := ratelimit.NoServerView()
	g := *grant
	if resp != nil {
		if resp.Usage.TotalTokens > 0 {
			actual = int64(resp.Usage.TotalTokens)
		}
		view = serverView(resp.RateLimit)
	} else {
		g = g.Refused()
		var ue *upstream.Error
		if errors.As(r.lastErr, &ue) {
			view = serverView(ue.RateLimit)
		}
	}
	if err := w.cfg.Limiter.Reconcile(ctx, g, actual, view); err != nil {
		w.log.Warn().Err(err).Msg("budget reconcile failed")
	}
}

func serverView(rl upstream.RateLimit) ratelimit.ServerView {
	return ratelimit.ServerView{RemainingRequests: rl.RemainingRequests, RemainingTokens: rl.RemainingTokens,
		ResetRequests: rl.ResetRequests, ResetTokens: rl.ResetTokens, LimitRequests: rl.LimitRequests, LimitTokens: rl.LimitTokens}
}

func (w *Worker) succeed(ctx context.Context, r *run, model string, tier int, resp *upstream.Response) error {
	served := jobs.ServedByPrimary
	if tier > 0 {
		served = "fallback:" + model
	}
	usage := resp.Usage
	w.observeUsage(model, usage)
	res := w.record(r, jobs.StatusSucceeded)
	res.Model = resp.Model
	res.ServedBy = served
	res.StatusCode = resp.StatusCode
	res.RequestID = resp.RequestID
	res.Response = json.RawMessage(resp.Body)
	res.Usage = &usage
	if err := w.saveSuccess(ctx, res); err != nil {
		return err
	}
	w.remember(ctx, r, resp)
	w.writeTaskResult(r, res)
	return nil
}

// saveSuccess stores a paid-for response; if Redis stays away for all of
// SaveGrace the job goes back to the queue (a snooze: the call did not fail,
// so no attempt is burned).
func (w *Worker) saveSuccess(ctx context.Context, res *jobs.Result) error {
	if _, err := w.store(ctx, res); err != nil {
		return &delayError{delay: w.cfg.PollInterval, reason: "store result: " + err.Error()}
	}
	return nil
}

// store saves a result. Redis may be away for a moment (a restart, a
// failover): rather than lose a paid-for response or a job's final failure,
// it keeps trying for up to SaveGrace, even through a shutdown.
func (w *Worker) store(ctx context.Context, res *jobs.Result) (results.Transition, error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.SaveGrace)
	defer cancel()
	delay := 50 * time.Millisecond
	for {
		t, err := w.results.Save(sctx, res)
		if err == nil {
			return t, nil
		}
		w.log.Warn().Err(err).Str("job_id", res.JobID).Msg("could not store a result yet; retrying while Redis recovers")
		select {
		case <-sctx.Done():
			return t, err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func (w *Worker) rateLimited(ctx context.Context, r *run, model string, v policy.Verdict) error {
	w.cfg.Metrics.RateLimited(model)
	delay := v.RetryAfter
	if delay <= 0 {
		// No hint from the server: wait a few backoff steps (the snooze
		// burns no attempt, so the delay cannot grow with attempts).
		delay = max(w.policy.Base, w.backoff(2))
	}
	if w.cfg.Limiter != nil {
		// The 429's x-ratelimit-* headers were reconciled with the call's
		// reservation already (reconcile).
		if err := w.cfg.Limiter.Cooldown(ctx, model, w.now().Add(delay)); err != nil {
			w.log.Warn().Err(err).Msg("set fleet cooldown failed")
		}
	}
	return &delayError{delay: delay, reason: "rate_limited: " + v.Reason}
}

func (w *Worker) hold(ctx context.Context, r *run, v policy.Verdict) error {
	// The hold names the key that failed, so a worker holding any other
	// key may lift it; a late 401 for an old key never blocks a new one.
	created, err := w.holds.Set(ctx, hold.State{Account: w.cfg.Account, Class: v.Class, Reason: v.Reason, KeyFingerprint: r.callKey, Since: w.now()})
	if err != nil {
		w.log.Error().Err(err).Msg("could not record the hold in Redis")
	}
	if created {
		w.cfg.Metrics.HoldPlaced(w.cfg.Account, v.Class)
	} else {
		w.cfg.Metrics.HoldActive(w.cfg.Account, v.Class)
	}
	if created {
		w.log.Error().Str("event", "hold").Str("account", w.cfg.Account).Str("class", v.Class).Str("reason", v.Reason).
			Msg("FLEET ON HOLD: upstream calls stop for this account; jobs are kept. Fix the API key or quota; calls resume when the key changes or after `llmq resume`")
	}
	return &delayError{delay: w.cfg.HoldRecheck, reason: "hold: " + v.Reason}
}

func (w *Worker) retry(ctx context.Context, r *run, v policy.Verdict, resp *upstream.Response) error {
	if r.attempt >= r.max {
		v.Reason = fmt.Sprintf("attempts exhausted (%d of %d): %s", r.attempt, r.max, v.Reason)
		return w.deadLetter(ctx, r, v, resp)
	}
	delay := w.retryDelayFor(r.retried, v)
	if !r.job.Deadline.IsZero() && w.now().Add(delay).After(r.job.Deadline) {
		v.Reason = fmt.Sprintf("deadline %s would pass before the next attempt: %s", r.job.Deadline.UTC().Format(time.RFC3339), v.Reason)
		return w.deadLetter(ctx, r, v, resp)
	}
	return &delayError{delay: delay, failure: true, reason: "retry: " + v.Reason, cause: r.lastErr}
}

func (w *Worker) deadLetter(ctx context.Context, r *run, v policy.Verdict, resp *upstream.Response) error {
	if err := w.saveFailure(ctx, r, v, resp); err != nil {
		// Archived without its result the job would never finish its
		// batch: keep it until Redis takes the result.
		return &delayError{delay: w.cfg.PollInterval, reason: "store failed result: " + err.Error()}
	}
	w.log.Error().Str("event", "dead_letter").Str("job_id", r.job.ID).Str("batch_id", r.job.BatchID).
		Int("attempt", r.attempt).Str("class", v.Class).Msg(v.Reason)
	return &deadLetter{reason: v.Reason}
}

// saveFailure stores a job's final failure with its last upstream error.
func (w *Worker) saveFailure(ctx context.Context, r *run, v policy.Verdict, resp *upstream.Response) error {
	res := w.record(r, jobs.StatusFailed)
	res.Error = &jobs.ErrorInfo{Outcome: string(policy.DeadLetter), Message: v.Reason, Type: v.Class}
	var ue *upstream.Error
	if errors.As(r.lastErr, &ue) {
		res.Error.Status, res.Error.Type, res.Error.Code, res.Error.Param = ue.StatusCode, ue.Type, ue.Code, ue.Param
		res.StatusCode, res.RequestID = ue.StatusCode, ue.RequestID
		if json.Valid(ue.Body) {
			res.Response = json.RawMessage(ue.Body)
		}
	}
	if resp != nil {
		res.StatusCode, res.RequestID = resp.StatusCode, resp.RequestID
	}
	t, err := w.store(ctx, res)
	if err != nil {
		w.log.Error().Err(err).Str("job_id", r.job.ID).Msg("could not store the failed result")
		return err
	}
	w.cfg.Metrics.DeadLetter(v.Class)
	if t != results.Kept {
		w.writeTaskResult(r, res)
	}
	return nil
}

func (w *Worker) record(r *run, status string) *jobs.Result {
	now := w.now()
	return &jobs.Result{JobID: r.job.ID, CustomID: r.job.CustomID, BatchID: r.job.BatchID, Status: status,
		Attempts: r.attempt, LatencyMS: now.Sub(r.started).Milliseconds(), StartedAt: r.started, CompletedAt: now}
}

// writeTaskResult stores the record on the asynq task too, so asynqmon shows
// it beside the task.
func (w *Worker) writeTaskResult(r *run, res *jobs.Result) {
	if r.task == nil || r.task.ResultWriter() == nil {
		return
	}
	b, err := json.Marshal(res)
	if err == nil {
		_, err = r.task.ResultWriter().Write(b)
	}
	if err != nil {
		w.log.Warn().Err(err).Str("job_id", r.job.ID).Msg("could not write the result to the asynq task")
	}
}
