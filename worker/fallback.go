package worker

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/llmq/llmq/cache"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/upstream"
)

// lastResort decides a run no model tier served: every tier failed over or
// was skipped by its open breaker. It serves the cached response or the
// static text when the job allows them, else waits for the earliest
// breaker (a snooze: no attempt burned), else returns otherwise: what the
// last tier's failure means with no tier left (retry or dead letter).
func (w *Worker) lastResort(ctx context.Context, a *attempt, skips *skipped, otherwise *verdict) *verdict {
	primary := a.req.Model
	if a.job.AllowCached {
		e, err := w.cache.Get(ctx, a.job.Body)
		switch {
		case err == nil:
			w.cfg.Metrics.CacheHit(primary)
			return w.servedStored(a, jobs.ServedByCache, e.Model, e.Body, e.RequestID)
		case !errors.Is(err, cache.ErrMiss):
			w.log.Warn().Err(err).Str("job_id", a.job.ID).Msg("response cache unreadable: trying the next tier")
		}
	}
	if w.staticFor(a) {
		body := cache.Static("chatcmpl-static-"+a.job.ID, primary, w.cfg.StaticResponse, w.now())
		return w.servedStored(a, jobs.ServedByStatic, primary, body, "")
	}
	if len(skips.models) > 0 {
		// Waiting for a breaker is a snooze, whatever the last call said.
		return skips.wait(w.now())
	}
	if otherwise == nil {
		return snoozeFor(w.cfg.PollInterval, "no model tier could be tried")
	}
	return otherwise
}

// hasLastResort reports whether a job that no model tier served may still
// be served from the cache or the static text.
func (w *Worker) hasLastResort(a *attempt) bool { return a.job.AllowCached || w.staticFor(a) }

func (w *Worker) staticFor(a *attempt) bool {
	return w.cfg.StaticResponse != "" && (a.job.AllowStatic || w.cfg.StaticForAll)
}

// servedStored is the success verdict of an answer served without a call,
// from the cache or the static text. Nothing was billed, so usage is zero.
func (w *Worker) servedStored(a *attempt, served, model string, body json.RawMessage, requestID string) *verdict {
	res := newResult(a, jobs.StatusSucceeded, w.now())
	res.Model, res.ServedBy, res.StatusCode, res.RequestID = model, served, 200, requestID
	res.Response = body
	res.Usage = &jobs.Usage{}
	w.log.Warn().Str("event", "served").Str("job_id", a.job.ID).Str("batch_id", a.job.BatchID).Str("served_by", served).
		Msg("no model tier could serve the job: served by " + served)
	return &verdict{act: done, result: res}
}

// remember caches a successful response for jobs that allow cached
// responses, keyed by the job's request (its primary model), whichever tier
// served it.
func (w *Worker) remember(ctx context.Context, a *attempt, resp *upstream.Response) {
	if !a.job.AllowCached {
		return
	}
	e := cache.Entry{Model: resp.Model, Body: json.RawMessage(resp.Body), RequestID: resp.RequestID, StoredAt: w.now()}
	if err := w.cache.Put(ctx, a.job.Body, e); err != nil {
		w.log.Warn().Err(err).Str("job_id", a.job.ID).Msg("could not cache the response")
	}
}
