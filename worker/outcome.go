package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/upstream"
)

// This file owns what a handler run can decide and how asynq reads it, the
// way river's JobSnooze does: every run ends in one verdict; finish
// (finish.go) carries it out and returns one of the errors below; asynq's
// hooks (isFailure, retryDelay, and onFailure in finish.go) read those
// errors back, and jobOutcome names them for llmq_jobs_total.

// RetryMargin is how many retries beyond a job's attempts asynq may count
// before it archives a task on its own. The worker counts attempts itself
// (a snooze never burns one), but asynq checks "retries exhausted" before
// it asks IsFailure, and counts crashes (lease expiry), task timeouts and
// panics as retries; producers therefore enqueue tasks with
// MaxRetry(attempts + RetryMargin) so that no snooze ever archives a job.
// asynqmon shows that sum as the task's Retry maximum.
const RetryMargin = 10

// action is what a verdict asks for.
type action int

const (
	// done: the job is finished; result, when set, is stored first.
	done action = iota
	// snooze: run the job again after delay without burning an attempt
	// (rate limited, budget wait, hold, open breaker, Redis away).
	snooze
	// retry: run the job again after delay; the attempt is burned.
	retry
	// deadLetter: archive the job now; its failure record is stored first.
	deadLetter
	// giveBack: the run was cut short by the worker stopping (or asynq
	// taking the task back): store nothing, count no failure; asynq puts the
	// job back and a later run does it.
	giveBack
)

// verdict is the one decision a handler run ends in.
type verdict struct {
	act    action
	delay  time.Duration // snooze, retry
	class  string        // failure class (policy.Class*) of a retry or dead letter
	reason string        // operator-readable, shown by asynqmon and dlq
	// result is the record to store: a success (done) or, for a dead
	// letter, filled in by apply from the last upstream answer.
	result *jobs.Result
	// resp and cause are the last upstream call's answer and error.
	resp  *upstream.Response
	cause error
}

func snoozeFor(d time.Duration, reason string) *verdict {
	return &verdict{act: snooze, delay: max(d, 0), reason: reason}
}

func dead(class, reason string) *verdict {
	return &verdict{act: deadLetter, class: class, reason: reason}
}

// giveBackErr is the error of a run cut short by shutdown.
func giveBackVerdict(err error) *verdict {
	return &verdict{act: giveBack, reason: "worker stopping: the job goes back to the queue", cause: err}
}

// delayError asks asynq to run the task again after delay. A snooze
// (failure == false) does not burn an attempt: isFailure returns false for
// it, so the task's retry counter stays as it is.
type delayError struct {
	delay   time.Duration
	failure bool
	reason  string
	cause   error // the upstream error behind a retry, if any
}

func (e *delayError) Error() string { return e.reason }
func (e *delayError) Unwrap() error { return e.cause }

// deadLetterError archives the task at once; its message is the reason
// asynqmon shows, e.g. "dead_letter: upstream 400 invalid_request_error
// (param messages[0].content): ...".
type deadLetterError struct{ reason string }

func (e *deadLetterError) Error() string { return "dead_letter: " + e.reason }
func (e *deadLetterError) Unwrap() error { return asynq.SkipRetry }

// givenBackError is a run cut short by the worker stopping: not a failure
// (isFailure false), so asynq keeps the attempt when it gets the answer at
// all (on a shutdown abort it has already put the task back).
type givenBackError struct{ cause error }

func (e *givenBackError) Error() string {
	return "worker stopping: job given back to the queue: " + e.cause.Error()
}
func (e *givenBackError) Unwrap() error { return e.cause }

// asynqError is the answer asynq gets for v.
func (v *verdict) asynqError() error {
	switch v.act {
	case done:
		return nil
	case snooze:
		return &delayError{delay: v.delay, reason: v.reason}
	case retry:
		return &delayError{delay: v.delay, failure: true, reason: v.reason, cause: v.cause}
	case deadLetter:
		return &deadLetterError{reason: v.reason}
	default:
		return &givenBackError{cause: v.cause}
	}
}

// isFailure is asynq's IsFailure: snoozes and give-backs do not count.
func isFailure(err error) bool {
	var (
		d *delayError
		g *givenBackError
	)
	switch {
	case errors.As(err, &d):
		return d.failure
	case errors.As(err, &g):
		return false
	}
	return true
}

// retryDelay is asynq's RetryDelayFunc: the delay the handler decided, or
// the policy's backoff for errors that carry none, rounded up to asynq's
// clock (see roundUpToSecond).
func (w *Worker) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var d *delayError
	if errors.As(err, &d) {
		return roundUpToSecond(w.now(), d.delay)
	}
	return roundUpToSecond(w.now(), w.policy.Backoff(n, nil))
}

// roundUpToSecond stretches d so that now+d falls on a whole second. asynq
// stores a retry's time as Unix seconds (rdb.Retry: processAt.Unix()) and
// runs the task once that second has begun, so a delay ending mid-second
// would run up to a second early and undercut a server's Retry-After. The
// price is up to one second of extra delay on each retry.
func roundUpToSecond(now time.Time, d time.Duration) time.Duration {
	target := now.Add(d)
	if whole := target.Truncate(time.Second); !whole.Equal(target) {
		target = whole.Add(time.Second)
	}
	return target.Sub(now)
}

// jobOutcome names what a handler run's error tells asynq to do: the
// outcome label of llmq_jobs_total.
func jobOutcome(err error) string {
	var (
		dl *deadLetterError
		d  *delayError
	)
	switch {
	case err == nil:
		return metrics.JobSucceeded
	case errors.As(err, &dl), errors.Is(err, asynq.SkipRetry):
		return metrics.JobDeadLetter
	case errors.As(err, &d) && d.failure:
		return metrics.JobRetry
	case errors.As(err, &d):
		return metrics.JobSnoozed
	default:
		return metrics.JobError
	}
}

// cutShort reports whether v may be an artefact of the run's context
// ending (a call canceled by shutdown, classified as a retryable failure)
// rather than a decision about the job.
func (v *verdict) cutShort() bool {
	switch v.act {
	case retry:
		return true
	case deadLetter:
		return v.class == policy.ClassCanceled || v.class == policy.ClassTimeout
	}
	return false
}

// fail turns a failure policy verdict (Retry or DeadLetter) on the last
// call into the run's verdict: a retry after the policy's delay, or a dead
// letter when the job's attempts are spent, its deadline would pass before
// the next attempt, or the policy says so. Attempts are counted here and
// only here.
func (w *Worker) fail(a *attempt, pv policy.Verdict, call tierCall) *verdict {
	v := &verdict{act: deadLetter, class: pv.Class, reason: pv.Reason, resp: call.resp, cause: call.err}
	if pv.Outcome != policy.Retry {
		return v
	}
	if a.number >= a.max {
		v.reason = fmt.Sprintf("attempts exhausted (%d of %d): %s", a.number, a.max, pv.Reason)
		return v
	}
	delay := w.policy.RetryDelay(a.retried, pv, nil)
	if d := a.job.Deadline; !d.IsZero() && w.now().Add(delay).After(d) {
		v.reason = fmt.Sprintf("deadline %s would pass before the next attempt: %s", d.UTC().Format(time.RFC3339), pv.Reason)
		return v
	}
	v.act, v.delay, v.reason = retry, delay, "retry: "+pv.Reason
	return v
}

// newResult starts a job's result record.
func newResult(a *attempt, status string, now time.Time) *jobs.Result {
	return &jobs.Result{JobID: a.job.ID, CustomID: a.job.CustomID, BatchID: a.job.BatchID, Status: status,
		Attempts: a.number, LatencyMS: now.Sub(a.started).Milliseconds(), StartedAt: a.started, CompletedAt: now}
}

// failureRecord is a dead letter's result record: the reason, the class and
// what the last upstream answer said.
func failureRecord(a *attempt, v *verdict, now time.Time) *jobs.Result {
	res := newResult(a, jobs.StatusFailed, now)
	res.Error = &jobs.ErrorInfo{Outcome: string(policy.DeadLetter), Message: v.reason, Type: v.class}
	var ue *upstream.Error
	if errors.As(v.cause, &ue) {
		res.Error.Status, res.Error.Type, res.Error.Code, res.Error.Param = ue.StatusCode, ue.Type, ue.Code, ue.Param
		res.StatusCode, res.RequestID = ue.StatusCode, ue.RequestID
		if json.Valid(ue.Body) {
			res.Response = json.RawMessage(ue.Body)
		}
	}
	if v.resp != nil {
		res.StatusCode, res.RequestID = v.resp.StatusCode, v.resp.RequestID
	}
	return res
}
