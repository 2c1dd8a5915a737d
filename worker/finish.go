package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/results"
)

// This file carries out a run's verdict (outcome.go's vocabulary): it
// stores the job's result — the one place results are written — and
// returns asynq's answer; and it dead-letters the tasks asynq is about to
// archive on its own.

// finish carries out v: it stores the job's result (a success, or a dead
// letter's failure record) — the one place results are written — logs the
// decision and returns asynq's answer. A run whose context ended (the
// worker stopping, or asynq taking the task back) is never a failure: its
// job goes back to the queue with nothing stored.
func (w *Worker) finish(ctx context.Context, a *attempt, v *verdict) error {
	if ctx.Err() != nil && v.cutShort() {
		v = giveBackVerdict(ctx.Err())
	}
	switch v.act {
	case done:
		if err := w.saveSuccess(ctx, a, v); err != nil {
			// A paid-for response is never dropped: the job waits for
			// Redis (no attempt burned; the redelivery check finds it).
			v = snoozeFor(w.cfg.PollInterval, "store result: "+err.Error())
		}
	case deadLetter:
		if a.foreign {
			w.log.Error().Str("job_id", a.job.ID).Str("outcome", string(policy.DeadLetter)).Msg(v.reason)
			break
		}
		if err := w.saveFailure(ctx, a, v); err != nil {
			// Archived without its result the job would never finish its
			// batch: keep it until Redis takes the result.
			v = snoozeFor(w.cfg.PollInterval, "store failed result: "+err.Error())
			break
		}
		w.log.Error().Str("event", "dead_letter").Str("job_id", a.job.ID).Str("batch_id", a.job.BatchID).
			Int("attempt", a.number).Str("class", v.class).Msg(v.reason)
	case giveBack:
		w.log.Warn().Str("job_id", a.job.ID).Int("attempt", a.number).Msg(v.reason)
	}
	return v.asynqError()
}

// saveSuccess stores a success verdict's result, caches it when the job
// allows cached answers, and writes it on the asynq task. A verdict without
// a result is a redelivered job whose result is stored already: it is
// counted in its batch again (idempotent), in case the crash came between
// storing and counting.
func (w *Worker) saveSuccess(ctx context.Context, a *attempt, v *verdict) error {
	if v.result == nil {
		if a.job.BatchID == "" {
			return nil
		}
		return w.results.Count(context.WithoutCancel(ctx), a.job.BatchID, a.job.ID, jobs.StatusSucceeded)
	}
	var (
		opts   []results.SaveOption
		onTask *redis.IntCmd
	)
	if key, ok := taskKey(ctx, a); ok && ctx.Err() == nil {
		// On the asynq task too (asynqmon shows it), in the save's round
		// trip; like asynq's ResultWriter, not once the task's run is over
		// (the save retries past it): a late write could land on a later
		// run's task, or recreate a deleted one's key and block its id.
		opts = append(opts, results.With(func(pipe redis.Pipeliner, record []byte) {
			onTask = nil
			if ctx.Err() == nil {
				onTask = pipe.HSet(ctx, key, taskResultField, record)
			}
		}))
	}
	bopt, breakerDone := w.breakerSuccess(ctx, a)
	if _, err := w.store(ctx, v.result, append(opts, bopt)...); err != nil {
		return err
	}
	breakerDone()
	if onTask != nil && onTask.Err() != nil {
		w.log.Warn().Err(onTask.Err()).Str("job_id", a.job.ID).Msg("could not write the result to the asynq task")
	}
	if v.resp != nil {
		w.remember(ctx, a, v.resp)
	}
	return nil
}

// saveFailure stores a dead letter's failure record with its last upstream
// error.
func (w *Worker) saveFailure(ctx context.Context, a *attempt, v *verdict) error {
	res := failureRecord(a, v, w.now())
	var b []byte
	bopt, breakerDone := w.breakerSuccess(ctx, a) // a dead letter's last call may have been answered (a 400)
	t, err := w.store(ctx, res, results.With(func(_ redis.Pipeliner, record []byte) { b = record }), bopt)
	breakerDone()
	if err != nil {
		w.log.Error().Err(err).Str("job_id", a.job.ID).Msg("could not store the failed result")
		return err
	}
	w.cfg.Metrics.DeadLetter(v.class)
	if t != results.Kept {
		w.writeTaskResult(a, b)
		w.keepDeadLetter(ctx, a.task, a.job.ID, a.number, v.reason)
	}
	return nil
}

// store saves a result (with opts: see results.With). Redis may be away
// for a moment (a restart, a failover): rather than lose a paid-for
// response or a job's final failure, it keeps trying for up to SaveGrace,
// even through a shutdown.
func (w *Worker) store(ctx context.Context, res *jobs.Result, opts ...results.SaveOption) (results.Transition, error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.SaveGrace)
	defer cancel()
	delay := saveRetryMin
	for {
		t, err := w.results.Save(sctx, res, opts...)
		if err == nil {
			return t, nil
		}
		w.log.Warn().Err(err).Str("job_id", res.JobID).Msg("could not store a result yet; retrying while Redis recovers")
		select {
		case <-sctx.Done():
			return t, err
		case <-time.After(delay):
		}
		delay = min(2*delay, saveRetryMax)
	}
}

// taskResultField is the field of an asynq task's hash that holds its
// result (what asynq's ResultWriter writes, and asynqmon shows).
const taskResultField = "result"

// taskKey returns the Redis key of the asynq task a runs as: asynq's
// "asynq:{<queue>}:t:<id>" (internal/base.TaskKey, under the queue's hash
// tag), so the worker can write the task's result in the round trip that
// stores the job's. A test reads it back through asynq's Inspector.
func taskKey(ctx context.Context, a *attempt) (string, bool) {
	queue, ok := asynq.GetQueueName(ctx)
	if !ok || a.task == nil || a.task.ResultWriter() == nil {
		return "", false
	}
	return "asynq:{" + queue + "}:t:" + a.task.ResultWriter().TaskID(), true
}

// writeTaskResult stores the record on the asynq task too, so asynqmon shows
// it beside the task.
func (w *Worker) writeTaskResult(a *attempt, b []byte) {
	if a.task == nil || a.task.ResultWriter() == nil || b == nil {
		return
	}
	if _, err := a.task.ResultWriter().Write(b); err != nil {
		w.log.Warn().Err(err).Str("job_id", a.job.ID).Msg("could not write the result to the asynq task")
	}
}

// onFailure is asynq's ErrorHandler: it runs for every handler error before
// asynq acts on it. When asynq is about to archive the task on its own (its
// retry count is spent, which the worker's own accounting avoids but
// crashes during last attempts can cause) and the handler did not
// dead-letter it, the failure is stored so the job has its result and its
// batch can finish. A give-back is never a failure.
func (w *Worker) onFailure(ctx context.Context, t *asynq.Task, err error) {
	var (
		dl *deadLetterError
		g  *givenBackError
	)
	if errors.As(err, &dl) || errors.As(err, &g) || errors.Is(err, asynq.RevokeTask) {
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
	a := &attempt{job: job, task: t, retried: retried, number: retried + 1, max: maxRetry, started: w.now()}
	v := dead(policy.ClassExhausted, fmt.Sprintf("asynq retries exhausted (%d of %d): %v", retried, maxRetry, err))
	v.cause = err
	w.finish(context.WithoutCancel(ctx), a, v)
}
