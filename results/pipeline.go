package results

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
)

// GetIn queues a read of a job's stored result on pipe, so a caller can
// batch it with other reads in one round trip (the keys may live in
// different hash slots: go-redis splits a pipeline by slot on Redis
// Cluster). The returned function, called after pipe.Exec, answers as Get.
func (s *Store) GetIn(ctx context.Context, pipe redis.Pipeliner, jobID string) func() (*jobs.Result, error) {
	cmd := pipe.Get(ctx, s.resultKey(jobID))
	return func() (*jobs.Result, error) {
		b, err := cmd.Bytes()
		if errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("job %q: %w", jobID, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("read result %q: %w", jobID, err)
		}
		var r jobs.Result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("decode result %q: %w", jobID, err)
		}
		return &r, nil
	}
}

// SaveOption changes a Save.
type SaveOption func(*saveOptions)

type saveOptions struct {
	with []func(pipe redis.Pipeliner, record []byte)
}

// With has fn queue commands on the pipeline that saves the result, so
// they cost no round trip of their own (the worker writes the record on
// its asynq task this way). fn gets the record as stored: JSON, valid
// UTF-8; it may also only keep it. The commands run whatever the save
// finds (also beside a Kept success), and their errors are fn's to read
// once Save has returned.
func With(fn func(pipe redis.Pipeliner, record []byte)) SaveOption {
	return func(o *saveOptions) { o.with = append(o.with, fn) }
}

// saveIn stores a result in one round trip: its save script, the batch
// count of a success when count is set (a success is counted as succeeded
// whatever the save found, a kept success being one too, so the count
// need not wait for the save's answer), and with's commands, all in one
// pipeline (their keys are in different hash slots, so they cannot be one
// script on Redis Cluster). It reports ok false when a script was not
// loaded: Save then runs them one by one (go-redis loads a script on
// NOSCRIPT).
func (s *Store) saveIn(ctx context.Context, r *jobs.Result, b []byte, count bool, with []func(redis.Pipeliner, []byte)) (t Transition, ok bool, err error) {
	pipe := s.rdb.Pipeline()
	save := s.save.EvalSha(ctx, pipe, []string{s.resultKey(r.JobID)}, b, r.Status, s.ttl.Milliseconds())
	var cnt *redis.Cmd
	if count {
		cnt = s.count.EvalSha(ctx, pipe, []string{s.batchKey(r.BatchID), s.batchStatusKey(r.BatchID)}, r.JobID, jobs.StatusSucceeded, s.ttl.Milliseconds())
	}
	for _, fn := range with {
		fn(pipe, b)
	}
	_, _ = pipe.Exec(ctx)
	if noScript(save.Err()) || (cnt != nil && noScript(cnt.Err())) {
		return "", false, nil
	}
	res, err := save.Text()
	if err != nil {
		return "", true, fmt.Errorf("save result %q: %w", r.JobID, err)
	}
	if cnt != nil {
		if err := cnt.Err(); err != nil {
			return parseTransition(res), true, fmt.Errorf("save result %q: count job in batch %q: %w", r.JobID, r.BatchID, err)
		}
	}
	return parseTransition(res), true, nil
}

func noScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }
