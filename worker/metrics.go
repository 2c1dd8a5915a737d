package worker

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/metrics"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/upstream"
)

// instrumented returns the worker as an asynq.Handler that counts every
// run's outcome in Config.Metrics (llmq_jobs_total, llmq_retries_total).
func (w *Worker) instrumented() asynq.Handler {
	if w.cfg.Metrics == nil {
		return w
	}
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		err := w.ProcessTask(ctx, t)
		w.cfg.Metrics.Job(jobOutcome(err))
		return err
	})
}

// jobOutcome names what a handler run's error tells asynq to do.
func jobOutcome(err error) string {
	var (
		dl *deadLetter
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

// observeCall records one upstream call: model, HTTP status (0 when no
// response came), the verdict's class and outcome, latency.
func (w *Worker) observeCall(model string, resp *upstream.Response, err error, v policy.Verdict, latency time.Duration) {
	if w.cfg.Metrics == nil {
		return
	}
	status := 0
	var ue *upstream.Error
	switch {
	case resp != nil:
		status = resp.StatusCode
	case errors.As(err, &ue):
		status = ue.StatusCode
	}
	w.cfg.Metrics.UpstreamCall(model, status, v.Class, string(v.Outcome), latency)
}

// observeUsage records the tokens an upstream reported for model.
func (w *Worker) observeUsage(model string, u jobs.Usage) {
	w.cfg.Metrics.Tokens(model, metrics.TokensPrompt, u.PromptTokens)
	w.cfg.Metrics.Tokens(model, metrics.TokensCompletion, u.CompletionTokens)
}
