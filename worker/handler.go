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
	growStack(0)
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
