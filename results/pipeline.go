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
			return nil, notFound(jobID)
		}
		if err != nil {
			return nil, fmt.Errorf("read result %q: %w", jobID, err)
		}
		var r jobs.Result
		if err := json.Unmarshal(validUTF8(b), &r); err != nil { // as Get
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

// saveIn stores a result, in one round trip for a job's first result: a
// SET NX of the record (the common case needs no script: no result yet,
// so it is stored), the batch count of a success when count is set (a
// success is counted as succeeded whatever the save finds, a kept success
// being one too, so the count need not wait for the save's answer), and
// with's commands, all in one pipeline (their keys are in different hash
// slots, so they cannot be one script on Redis Cluster). When the job has
// a result already, save.lua decides in a second round trip: a success is
// kept, a failure replaced.
func (s *Store) saveIn(ctx context.Context, r *jobs.Result, b []byte, count bool, with []func(redis.Pipeliner, []byte)) (Transition, error) {
	key := s.resultKey(r.JobID)
	pipe := s.rdb.Pipeline()
	first := pipe.SetNX(ctx, key, b, s.ttl)
	var cnt *redis.Cmd
	if count {
		cnt = s.count.EvalSha(ctx, pipe, []string{s.batchKey(r.BatchID), s.batchStatusKey(r.BatchID)}, r.JobID, jobs.StatusSucceeded, s.ttl.Milliseconds())
	}
	for _, fn := range with {
		fn(pipe, b)
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below (with's by their owners)
	created, err := first.Result()
	if err != nil {
		return "", fmt.Errorf("save result %q: %w", r.JobID, err)
	}
	t := Created
	if !created {
		res, err := s.save.Run(ctx, s.rdb, []string{key}, b, r.Status, s.ttl.Milliseconds()).Text()
		if err != nil {
			return "", fmt.Errorf("save result %q: %w", r.JobID, err)
		}
		t = parseTransition(res)
	}
	if cnt != nil {
		err := cnt.Err()
		if noScript(err) {
			// Redis lost the script (a restart, a failover): Count loads it.
			err = s.Count(ctx, r.BatchID, r.JobID, jobs.StatusSucceeded)
		}
		if err != nil {
			return t, fmt.Errorf("save result %q: count job in batch %q: %w", r.JobID, r.BatchID, err)
		}
	}
	return t, nil
}

func noScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }
