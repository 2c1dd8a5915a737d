package worker

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/llmq/llmq/metrics"
)

func TestJobOutcomeNamesWhatAsynqIsTold(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                        metrics.JobSucceeded,
		&deadLetterError{reason: "bad"}:            metrics.JobDeadLetter,
		fmt.Errorf("x: %w", &deadLetterError{}):    metrics.JobDeadLetter,
		&delayError{failure: true}:                 metrics.JobRetry,
		&delayError{failure: false}:                metrics.JobSnoozed,
		fmt.Errorf("budget: %w", context.Canceled): metrics.JobError,
		errors.New("other"):                        metrics.JobError,
	} {
		if got := jobOutcome(err); got != want {
			t.Errorf("jobOutcome(%v) = %s, want %s", err, got, want)
		}
	}
}
