package results

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// DeadLetter is llmq's own record of a dead-lettered task: enough to list
// it, show why it failed and enqueue it again after asynq has dropped it.
// asynq keeps at most 10,000 archived tasks per queue and none older than
// 90 days, deleting the oldest without a trace; a large batch with a bad
// prompt template passes that at once. llmq keeps every dead letter for as
// long as results are kept.
type DeadLetter struct {
	// JobID is the task id.
	JobID string `json:"job_id"`
	// Queue is the asynq queue the task ran from.
	Queue string `json:"queue"`
	// Type and Payload are the task's, as enqueued.
	Type    string `json:"type"`
	Payload []byte `json:"payload"`
	// MaxRetry is the task's asynq retry limit, Timeout its run timeout
	// (0: asynq's default).
	MaxRetry int           `json:"max_retry"`
	Timeout  time.Duration `json:"timeout,omitempty"`
	// Attempts is how many upstream calls the job made.
	Attempts int `json:"attempts"`
	// Reason is the dead letter's reason, as asynq's last error shows it.
	Reason string `json:"reason"`
	// At is when the job was dead-lettered.
	At time.Time `json:"at"`
}

//go:embed deadletter.lua
var deadLetterLua string

var deadLetterScript = redis.NewScript(deadLetterLua)

// Both keys of a queue's dead letters share the queue's hash tag.
func (s *Store) deadIndexKey(queue string) string { return s.prefix + ":dead:{" + queue + "}" }
func (s *Store) deadTasksKey(queue string) string { return s.prefix + ":dead:{" + queue + "}:tasks" }

// AddDeadLetter records d (replacing an earlier record of the same job)
// and forgets the queue's dead letters older than the store's TTL, which
// their results outlived no longer.
func (s *Store) AddDeadLetter(ctx context.Context, d DeadLetter) error {
	if d.At.IsZero() {
		d.At = time.Now()
	}
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("record dead letter %q: encode: %w", d.JobID, err)
	}
	err = deadLetterScript.Run(ctx, s.rdb, []string{s.deadIndexKey(d.Queue), s.deadTasksKey(d.Queue)},
		d.JobID, d.At.UnixMilli(), b, d.At.Add(-s.ttl).UnixMilli(), s.ttl.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("record dead letter %q: %w", d.JobID, err)
	}
	return nil
}

// DeadLetters returns up to count of queue's dead letters, newest first,
// skipping the first offset.
func (s *Store) DeadLetters(ctx context.Context, queue string, offset, count int64) ([]DeadLetter, error) {
	ids, err := s.rdb.ZRevRange(ctx, s.deadIndexKey(queue), offset, offset+count-1).Result()
	if err != nil {
		return nil, fmt.Errorf("list dead letters of queue %q: %w", queue, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	vals, err := s.rdb.HMGet(ctx, s.deadTasksKey(queue), ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("list dead letters of queue %q: %w", queue, err)
	}
	out := make([]DeadLetter, 0, len(ids))
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // removed meanwhile
		}
		var d DeadLetter
		if err := json.Unmarshal([]byte(str), &d); err != nil {
			return nil, fmt.Errorf("decode dead letter %q: %w", ids[i], err)
		}
		out = append(out, d)
	}
	return out, nil
}

// GetDeadLetter returns the dead letter of jobID in queue, or ErrNotFound.
func (s *Store) GetDeadLetter(ctx context.Context, queue, jobID string) (*DeadLetter, error) {
	str, err := s.rdb.HGet(ctx, s.deadTasksKey(queue), jobID).Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("dead letter %q in queue %q: %w", jobID, queue, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read dead letter %q: %w", jobID, err)
	}
	var d DeadLetter
	if err := json.Unmarshal([]byte(str), &d); err != nil {
		return nil, fmt.Errorf("decode dead letter %q: %w", jobID, err)
	}
	return &d, nil
}

// RemoveDeadLetters forgets the dead letters of jobIDs in queue (requeued
// or deleted).
func (s *Store) RemoveDeadLetters(ctx context.Context, queue string, jobIDs ...string) error {
	if len(jobIDs) == 0 {
		return nil
	}
	members := make([]any, len(jobIDs))
	for i, id := range jobIDs {
		members[i] = id
	}
	pipe := s.rdb.TxPipeline()
	pipe.ZRem(ctx, s.deadIndexKey(queue), members...)
	pipe.HDel(ctx, s.deadTasksKey(queue), jobIDs...)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("remove %d dead letters of queue %q: %w", len(jobIDs), queue, err)
	}
	return nil
}
