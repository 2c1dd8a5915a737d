package worker

import (
	"context"
	"time"
)

// warnShortTask logs, before a call, when the run's asynq deadline — the
// task timeout the producer gave the job — ends before the call's own
// bound (CallTimeout, or the job's deadline if sooner): asynq would cancel
// the call mid-way, paid for and then retried. Producers derive the task
// timeout from the workers' call timeout and fallback tiers
// (producer.TaskTimeout); a worker cannot know at start what producers
// chose, so it says so here, once per call that is at risk.
func (w *Worker) warnShortTask(ctx context.Context, a *attempt, model string, tier int) {
	taskEnd, ok := ctx.Deadline()
	if !ok {
		return
	}
	// asynq's deadline is wall-clock time, whatever clock the worker runs.
	now := time.Now()
	callEnd := now.Add(w.cfg.CallTimeout)
	if d := a.job.Deadline; !d.IsZero() && d.Before(callEnd) {
		callEnd = d
	}
	if !taskEnd.Before(callEnd) {
		return
	}
	w.log.Warn().Str("event", "task_timeout_short").Str("job_id", a.job.ID).Str("model", model).Int("tier", tier).
		Dur("task_time_left", taskEnd.Sub(now)).Dur("call_timeout", w.cfg.CallTimeout).
		Msg("the job's task timeout ends before this call's call_timeout: asynq would cancel the call mid-way; " +
			"enqueue with the workers' call timeout and fallbacks (producer.WithCallTimeout, producer.WithFallbackTiers)")
}
