package worker

import (
	"time"

	"github.com/hibiken/asynq"
)

// delayError asks asynq to run the task again after delay. A snooze
// (failure == false) does not burn an attempt: asynq's IsFailure returns
// false for it, so the task's retry counter stays as it is.
type delayError struct {
	delay   time.Duration
	failure bool
	reason  string
	cause   error // the upstream error behind a retry, if any
}

func (e *delayError) Error() string { return e.reason }
func (e *delayError) Unwrap() error { return e.cause }

// deadLetter archives the task at once; its message is the reason asynqmon
// shows, e.g. "dead_letter: upstream 400 invalid_request_error (param
// messages[0].content): ...".
type deadLetter struct{ reason string }

func (e *deadLetter) Error() string { return "dead_letter: " + e.reason }
func (e *deadLetter) Unwrap() error { return asynq.SkipRetry }
