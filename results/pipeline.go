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

// saveSucceeded stores a success and counts it in its batch in one round
// trip: both scripts go in one pipeline (their keys are in different hash
// slots, so they cannot be one script on Redis Cluster). A success is
// counted as succeeded whatever the save found (a kept success is one
// too), so the count need not wait for the save's answer. It reports
// ok false when the scripts were not loaded yet: Save then runs them one by
// one (go-redis loads a script on NOSCRIPT).
func (s *Store) saveSucceeded(ctx context.Context, r *jobs.Result, b []byte) (t Transition, ok bool, err error) {
	pipe := s.rdb.Pipeline()
	save := s.save.EvalSha(ctx, pipe, []string{s.resultKey(r.JobID)}, b, r.Status, s.ttl.Milliseconds())
	count := s.count.EvalSha(ctx, pipe, []string{s.batchKey(r.BatchID), s.batchStatusKey(r.BatchID)}, r.JobID, jobs.StatusSucceeded, s.ttl.Milliseconds())
	_, _ = pipe.Exec(ctx)
	if noScript(save.Err()) || noScript(count.Err()) {
		return "", false, nil
	}
	res, err := save.Text()
	if err != nil {
		return "", true, fmt.Errorf("save result %q: %w", r.JobID, err)
	}
	if err := count.Err(); err != nil {
		return parseTransition(res), true, fmt.Errorf("save result %q: count job in batch %q: %w", r.JobID, r.BatchID, err)
	}
	return parseTransition(res), true, nil
}

func noScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }
