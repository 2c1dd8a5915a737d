package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/results"
)

// attempt is one handler run of one job: the payload decoded once, the
// attempt counted once, and what the gate read of the fleet's state.
type attempt struct {
	job     *jobs.Job
	req     *jobs.Request // the typed view of job.Body
	task    *asynq.Task
	retried int // failed attempts before this one (asynq's retry count)
	number  int // 1-based attempt number
	max     int // attempts allowed
	started time.Time
	callKey string // fingerprint of the API key the last call used
	// refreshed: the key was refreshed after a 401 in this run.
	refreshed bool
	foreign   bool     // not an llmq task: archived, nothing stored
	tiers     []string // the model tiers, primary first

	// From the gate's read, for the primary model: its breaker's permit
	// when the read settled it, and its fleet cooldown when its budget is
	// unlimited (budgetRead).
	permit     breaker.Permit
	permitRead bool
	// answered is the permit of the last call the upstream answered: its
	// success is recorded in the breaker with the save of the result.
	answered   breaker.Permit
	budgetRead bool
	cooldown   time.Time
}

// ProcessTask runs one attempt of a job; it implements asynq.Handler.
// decode → gate (redelivery, deadline, hold) → walk the model tiers → one
// verdict → finish (store what it says, tell asynq).
func (w *Worker) ProcessTask(ctx context.Context, t *asynq.Task) error {
	a, v := w.decode(ctx, t)
	if v == nil {
		v = w.gate(ctx, a)
	}
	if v == nil {
		v = w.walk(ctx, a)
	}
	return w.finish(ctx, a, v)
}

// decode reads the task's payload once: the job, its typed request, and
// which attempt this is. An undecodable payload is dead-lettered at once.
func (w *Worker) decode(ctx context.Context, t *asynq.Task) (*attempt, *verdict) {
	id, _ := asynq.GetTaskID(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	a := &attempt{job: &jobs.Job{ID: id}, task: t, retried: retried, number: retried + 1, max: w.policy.Attempts, started: w.now()}
	if t.Type() != jobs.TaskType {
		a.foreign = true
		return a, dead(policy.ClassInvalidPayload, fmt.Sprintf("unknown task type %q in an llmq queue: llmq workers run %q tasks only", t.Type(), jobs.TaskType))
	}
	job, req, err := jobs.DecodeRequest(t.Payload())
	if err != nil {
		return a, dead(policy.ClassInvalidPayload, fmt.Sprintf("undecodable payload (%d bytes): %v", len(t.Payload()), err))
	}
	a.job, a.req = job, req
	if job.MaxAttempts > 0 {
		a.max = job.MaxAttempts
	}
	return a, nil
}

// gate reads, in one round trip, what may stop the job before any call:
// a result already stored (a redelivery after a crash: never pay twice),
// the account's hold, and for the primary model its breaker and, when its
// budget is unlimited, its fleet cooldown. It returns nil when the job may
// go on to its tiers.
func (w *Worker) gate(ctx context.Context, a *attempt) *verdict {
	model := a.req.Model
	pipe := w.cfg.Redis.Pipeline()
	prev := w.results.GetIn(ctx, pipe, a.job.ID)
	holdState := w.holds.GetIn(ctx, pipe, w.cfg.Account)
	permit := w.breaker.AllowIn(ctx, pipe, model)
	var cooldown func() (time.Time, error)
	if w.cfg.Limiter != nil && w.cfg.Limiter.Unlimited(model) {
		cooldown = w.cfg.Limiter.CooldownIn(ctx, pipe, model)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		if ctx.Err() != nil {
			return giveBackVerdict(ctx.Err())
		}
		return snoozeFor(w.cfg.PollInterval, "fleet state unreadable, waiting: "+err.Error())
	}
	if r, err := prev(); err == nil && r.Status == jobs.StatusSucceeded {
		w.log.Info().Str("job_id", a.job.ID).Msg("job already has a result: redelivery skipped")
		return &verdict{act: done} // finish counts it in its batch, in case the crash came before
	}
	if d := a.job.Deadline; !d.IsZero() && !w.now().Before(d) {
		return dead(policy.ClassDeadline, fmt.Sprintf("deadline %s passed before attempt %d", d.UTC().Format(time.RFC3339), a.number))
	}
	st, err := holdState()
	if err != nil {
		return snoozeFor(w.cfg.PollInterval, "hold state unreadable, waiting: "+err.Error())
	}
	if v := w.holdGate(ctx, st); v != nil {
		return v
	}
	a.permit, a.permitRead = permit()
	if cooldown != nil {
		until, err := cooldown()
		if err != nil {
			return snoozeFor(w.cfg.PollInterval, "budget: "+err.Error())
		}
		if !until.IsZero() {
			return snoozeFor(until.Sub(w.now()), "budget: fleet cooldown of "+model+" after a 429 until "+until.UTC().Format(time.RFC3339Nano))
		}
		a.budgetRead = true
	}
	return nil
}

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
