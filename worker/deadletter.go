package worker

import (
	"context"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/results"
)

// keepDeadLetter records a dead letter in llmq's own record
// (results.DeadLetter), which keeps what asynq's archive drops: asynq keeps
// at most 10,000 archived tasks per queue and deletes the oldest, so `llmq
// dlq` would lose sight of them. A failure to record is logged; the
// failure record and asynq's archive still hold the job.
func (w *Worker) keepDeadLetter(ctx context.Context, task *asynq.Task, jobID string, attempts int, reason string) {
	if task == nil {
		return
	}
	queue, _ := asynq.GetQueueName(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	d := results.DeadLetter{JobID: jobID, Queue: queue, Type: task.Type(), Payload: task.Payload(), MaxRetry: maxRetry,
		Attempts: attempts, Reason: "dead_letter: " + reason, At: w.now()}
	if err := w.results.AddDeadLetter(context.WithoutCancel(ctx), d); err != nil {
		w.log.Warn().Err(err).Str("job_id", jobID).Msg("could not record the dead letter in llmq's record (asynq's archive still holds it)")
	}
}
