// Package worker runs llmq jobs: an asynq server whose handler decodes a
// job, waits for the fleet-wide hold and budget, calls the upstream, lets
// the failure policy classify the answer, and turns that verdict into an
// asynq action: result stored, retried with backoff, snoozed without burning
// an attempt, handed to the next model tier, or dead-lettered with a reason
// an operator can read in asynqmon.
package worker
