package worker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/upstream"
)

// The serving tiers of a job, in order: the primary model, its fallback
// models (the job's own list, else Config.Fallbacks for the model), then
// the last resorts of fallback.go (cached response, static text). A model
// tier is left for the next one when the failure policy says fallback or
// its breaker is open; when every tier is used up and one was skipped only
// because its breaker is open, the job waits for that breaker without
// burning an attempt.

// tierCall is one upstream call of a tier and its classification.
type tierCall struct {
	resp    *upstream.Response
	err     error
	pv      policy.Verdict
	started time.Time // when the call began
}

// timedOutSince returns p with, when c timed out, when c began
// (breaker.Permit.Started): the breaker does not count such a failure in a
// row while the model answered other calls after it began. Any other
// failure counts in a row.
func timedOutSince(p breaker.Permit, c tierCall) breaker.Permit {
	if c.pv.Class == policy.ClassTimeout {
		p.Started = c.started
	}
	return p
}

// walk tries the job's model tiers in order and returns the run's verdict.
func (w *Worker) walk(ctx context.Context, a *attempt) *verdict {
	tiers := w.tiers(a)
	a.tiers = tiers
	var (
		skips     skipped  // tiers refused by their breaker
		otherwise *verdict // what the last tier that failed over would have done
	)
	for i, model := range tiers {
		v, next := w.tier(ctx, a, i, model, &skips)
		if !next {
			return v
		}
		if v != nil {
			otherwise = v
		}
		if i+1 < len(tiers) {
			w.log.Warn().Str("job_id", a.job.ID).Str("model", model).Str("next_model", tiers[i+1]).Msg("trying the next model tier")
		}
	}
	return w.lastResort(ctx, a, &skips, otherwise)
}

// tier runs one model tier: its breaker, its budget, the call (once more
// with a refreshed key after a 401). next reports that the walk goes on to
// the next tier; v is then, for a tier that failed over, what its failure
// would have meant with no tier left.
func (w *Worker) tier(ctx context.Context, a *attempt, i int, model string, skips *skipped) (v *verdict, next bool) {
	body, req := []byte(a.job.Body), a.req
	if i > 0 {
		var err error
		if body, err = jobs.WithModel(a.job.Body, model); err != nil {
			return dead(policy.ClassInvalidPayload, err.Error()), false
		}
		r := *a.req
		r.Model, req = model, &r
	}
	call, v := w.callTier(ctx, a, i, model, body, req, skips)
	if v == nil && call.pv.Class == policy.ClassAuth && w.keyRefreshed(a) {
		w.log.Warn().Str("job_id", a.job.ID).Msg("upstream 401: API key changed at its source; trying the new key")
		call, v = w.callTier(ctx, a, i, model, body, req, skips)
	}
	switch {
	case v != nil:
		return v, false
	case call.pv.Outcome == "": // skipped: breaker open
		return nil, true
	}
	switch call.pv.Outcome {
	case policy.OK:
		return w.served(a, model, i, call.resp), false
	case policy.RateLimited:
		return w.rateLimited(ctx, model, call), false
	case policy.Hold:
		return w.placeHold(ctx, a, call.pv), false
	case policy.Fallback:
		pv := call.pv
		pv.Outcome = pv.Otherwise
		return w.fail(a, pv, call), true
	}
	return w.fail(a, call.pv, call), false
}

// callTier makes one call to model if its breaker and budget allow: v is
// set when the run ends here (a snooze for the budget, a dead letter for a
// job larger than the budget); a call with no verdict (zero pv) means the
// breaker skipped the tier.
func (w *Worker) callTier(ctx context.Context, a *attempt, i int, model string, body []byte, req *jobs.Request, skips *skipped) (tierCall, *verdict) {
	permit, v := w.admit(ctx, a, i, model)
	if v != nil {
		return tierCall{}, v
	}
	if !permit.Allowed {
		skips.add(w, a, permit)
		return tierCall{}, nil
	}
	grant, v := w.acquire(ctx, a, i, model, req)
	if v != nil {
		w.recordBreaker(ctx, permit, breaker.Abandon)
		return tierCall{}, v
	}
	call := w.call(ctx, a, model, i, body)
	w.settle(ctx, a, timedOutSince(permit, call), call.pv)
	w.reconcile(ctx, grant, call)
	if permit.Probe && call.pv.Breaker && w.freeProbe(ctx, a) {
		// The probe failed and reopened the breaker: the outage, not the
		// job, is to blame, so no attempt is burned.
		skips.add(w, a, breaker.Permit{Model: model, State: breaker.Open, RetryAt: w.now().Add(w.breaker.Config().Open)})
		return tierCall{}, nil
	}
	return call, nil
}

// served is the success verdict of a model tier's answer.
func (w *Worker) served(a *attempt, model string, tier int, resp *upstream.Response) *verdict {
	res := newResult(a, jobs.StatusSucceeded, w.now())
	res.Model = resp.Model
	res.ServedBy = jobs.ServedByPrimary
	if tier > 0 {
		res.ServedBy = "fallback:" + model
	}
	usage := resp.Usage
	w.cfg.Metrics.Tokens(model, metrics.TokensPrompt, usage.PromptTokens)
	w.cfg.Metrics.Tokens(model, metrics.TokensCompletion, usage.CompletionTokens)
	res.StatusCode, res.RequestID = resp.StatusCode, resp.RequestID
	res.Response = json.RawMessage(resp.Body)
	res.Usage = &usage
	return &verdict{act: done, result: res, resp: resp}
}

// tiers returns the models to try for a job, primary first, without
// repeats.
func (w *Worker) tiers(a *attempt) []string {
	primary := a.req.Model
	fb := a.job.Fallback
	if len(fb) == 0 {
		fb = w.cfg.Fallbacks[primary]
	}
	if len(fb) == 0 {
		return []string{primary}
	}
	out := []string{primary}
	for _, m := range fb {
		if m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// call makes one upstream call and classifies its answer, logging one
// event and counting it in the metrics.
func (w *Worker) call(ctx context.Context, a *attempt, model string, tier int, body []byte) tierCall {
	// One call is bounded by CallTimeout and by the job's own deadline.
	cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
	defer cancel()
	if !a.job.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		cctx, cancelDeadline = context.WithDeadline(cctx, a.job.Deadline)
		defer cancelDeadline()
	}
	w.warnShortTask(ctx, a, model, tier)
	start := w.now()
	resp, err := w.cfg.Upstream.Chat(cctx, body)
	latency := w.now().Sub(start)
	c := tierCall{resp: resp, err: err, pv: w.policy.Classify(resp, err), started: start}
	status, requestID := 0, ""
	var ue *upstream.Error
	switch {
	case resp != nil:
		// The client reads the key once per call and says which it used.
		status, requestID, a.callKey = resp.StatusCode, resp.RequestID, resp.KeyFingerprint
	case errors.As(err, &ue):
		status, requestID, a.callKey = ue.StatusCode, ue.RequestID, ue.KeyFingerprint
	}
	w.cfg.Metrics.UpstreamCall(model, status, c.pv.Class, w.metricOutcome(a, tier, c.pv), latency)
	ev := w.log.Info()
	if c.pv.Outcome != policy.OK {
		ev = w.log.Warn()
	}
	ev = ev.Str("event", "upstream_call").Str("endpoint", "/chat/completions").Str("method", "POST").
		Str("job_id", a.job.ID).Str("batch_id", a.job.BatchID).Int("attempt", a.number).Int("max_attempts", a.max).
		Str("model", model).Int("tier", tier).Int("payload_bytes", len(body)).Dur("latency", latency).
		Str("class", c.pv.Class).Str("outcome", string(c.pv.Outcome))
	if status != 0 {
		ev = ev.Int("status", status).Str("request_id", requestID)
	}
	if resp != nil && resp.UsageErr != nil {
		// The answer is kept; the budget keeps its estimate.
		ev = ev.Str("usage_error", resp.UsageErr.Error())
	}
	if err != nil {
		ev = ev.Str("error", err.Error())
	}
	ev.Msg("upstream call")
	return c
}

// metricOutcome is the outcome label of a call in
// llmq_upstream_requests_total: the policy's outcome, except that a
// fallback is counted as one only when the job has a tier to fall back to;
// otherwise as what the failure then means (retry or dead_letter).
func (w *Worker) metricOutcome(a *attempt, tier int, pv policy.Verdict) string {
	if pv.Outcome == policy.Fallback && tier+1 >= len(a.tiers) && !w.hasLastResort(a) {
		return string(pv.Otherwise)
	}
	return string(pv.Outcome)
}
