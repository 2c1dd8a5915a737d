package worker

import (
	"context"
	"errors"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/ratelimit"
	"github.com/llmq/llmq/upstream"
)

// acquire takes the call's cost from model's fleet-wide budget. An
// unlimited budget takes nothing (the gate read its cooldown for the
// primary model). Short waits block; longer ones snooze the job; a job
// larger than the budget itself is dead-lettered.
func (w *Worker) acquire(ctx context.Context, a *attempt, tier int, model string, req *jobs.Request) (*ratelimit.Reservation, *verdict) {
	l := w.cfg.Limiter
	if l == nil || (tier == 0 && a.budgetRead) {
		return nil, nil
	}
	cost := w.est.Estimate(req)
	waitStart := w.now()
	res, err := l.Acquire(ctx, model, ratelimit.Cost{Requests: 1, Tokens: int64(cost.Total())})
	var we *ratelimit.WaitError
	switch {
	case err == nil:
		w.cfg.Metrics.BudgetWait(model, w.now().Sub(waitStart))
		w.cfg.Metrics.Tokens(model, metrics.TokensEstimated, cost.Total())
		return &res, nil
	case errors.As(err, &we):
		return nil, snoozeFor(we.Until.Sub(w.now()), "budget: waiting for "+model+" budget: "+err.Error())
	case errors.Is(err, ratelimit.ErrTooLarge):
		return nil, dead(policy.ClassTooLarge, err.Error())
	case errors.Is(err, ratelimit.ErrNoBudget):
		// A configuration fault, not the job's: keep the job and say so.
		w.log.Error().Str("event", "no_budget").Str("model", model).Err(err).Msg("no budget configured for this model: its jobs wait")
		return nil, snoozeFor(w.cfg.HoldRecheck, "budget: "+err.Error())
	case ctx.Err() != nil:
		return nil, giveBackVerdict(err)
	default:
		return nil, snoozeFor(w.cfg.PollInterval, "budget: "+err.Error())
	}
}

// reconcile tells the budget what the call really cost and what the server
// says is left. A call without a completion (a 429, an error answer, no
// answer) was not charged by the provider: its error's x-ratelimit-*
// headers are still the provider's view.
func (w *Worker) reconcile(ctx context.Context, grant *ratelimit.Reservation, call tierCall) {
	if grant == nil {
		return
	}
	actual := int64(-1) // unknown: nothing is refunded
	view := ratelimit.NoServerView()
	g := *grant
	if call.resp != nil {
		if call.resp.Usage.TotalTokens > 0 {
			actual = int64(call.resp.Usage.TotalTokens)
		}
		view = serverView(call.resp.RateLimit)
	} else {
		g = g.Refused()
		var ue *upstream.Error
		if errors.As(call.err, &ue) {
			view = serverView(ue.RateLimit)
		}
	}
	if err := w.cfg.Limiter.Reconcile(ctx, g, actual, view); err != nil {
		w.log.Warn().Err(err).Msg("budget reconcile failed")
	}
}

// rateLimited cools the whole fleet down on model until the 429's
// Retry-After (or a few backoff steps without one) and snoozes the job: a
// rate limit burns no attempt.
func (w *Worker) rateLimited(ctx context.Context, model string, call tierCall) *verdict {
	w.cfg.Metrics.RateLimited(model)
	delay := call.pv.RetryAfter
	if delay <= 0 {
		// No hint from the server: wait a few backoff steps (the snooze
		// burns no attempt, so the delay cannot grow with attempts).
		delay = max(w.policy.Base, w.policy.Backoff(rateLimitBackoffStep, nil))
	}
	if l := w.cfg.Limiter; l != nil {
		if err := l.Cooldown(ctx, model, w.now().Add(delay)); err != nil {
			w.log.Warn().Err(err).Msg("set fleet cooldown failed")
		}
		// The 429's x-ratelimit-* headers were reconciled with the call's
		// reservation already (reconcile).
	}
	return snoozeFor(delay, "rate_limited: "+call.pv.Reason)
}

// rateLimitBackoffStep is the backoff step a 429 without Retry-After waits.
const rateLimitBackoffStep = 2

func serverView(rl upstream.RateLimit) ratelimit.ServerView {
	return ratelimit.ServerView{RemainingRequests: rl.RemainingRequests, RemainingTokens: rl.RemainingTokens,
		ResetRequests: rl.ResetRequests, ResetTokens: rl.ResetTokens, LimitRequests: rl.LimitRequests, LimitTokens: rl.LimitTokens}
}
