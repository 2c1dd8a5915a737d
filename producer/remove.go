package producer

import (
	"context"
	_ "embed"
	"fmt"
)

// RemoveChunk is how many tasks one Redis call of RemoveQueued handles.
const RemoveChunk = 1000

// removePage is how many entries of the pending list remove.lua reads at
// a time, from each end in turn, until it has found every task.
const removePage = 1000

// removedMarker overwrites a removed task's entry in the pending list
// before an LREM from each end drops them all (remove.lua); no job id has
// a NUL byte.
const removedMarker = "\x00llmq:removed"

// Removal is what RemoveQueued found of one job's task.
type Removal int

// The outcomes of RemoveQueued.
const (
	// NotQueued: the queue holds no task of the job (never enqueued, or
	// already deleted or gone).
	NotQueued Removal = iota
	// Removed: the task had not started (pending, scheduled, waiting for
	// a retry); it is deleted and will not run.
	Removed
	// InFlight: a worker is running the task (asynq's active state); it is
	// left to finish and store its result.
	InFlight
)

// asynq v0.26's key layout of a queue (internal/base): QueueKeyPrefix,
// PendingKey, AllGroups, GroupKeyPrefix. TestRemoveQueuedAsAsynq checks
// RemoveQueued against asynq's Inspector.
func queuePrefix(queue string) string { return "asynq:{" + queue + "}:" }

//go:embed remove.lua
var removeLua string

// RemoveQueued deletes the tasks of jobs ids in queue that have not
// started, as asynq's Inspector.DeleteTask does one at a time, and
// reports what it found of each (out[i] is ids[i]'s). It costs one round
// trip per RemoveChunk ids, and a look through the queue's pending list
// from both ends that stops when the chunk's pending tasks are found:
// about twice the largest distance from one of them to its nearer end.
// For a batch enqueued at once that is bounded by the batch's own size
// whether the rest of the queue lies behind it (a batch enqueued recently,
// at the head) or was enqueued after it (a batch being drained, at the
// tail); only a batch in the middle of the list costs the whole list.
// DeleteTask costs two round trips and a scan of the whole list per task
// (minutes for tens of thousands of tasks). Each chunk is atomic: a task
// is deleted only if it has not started. A chunk blocks Redis while it
// looks, all tenants' tasks included: 7-12 ms for a chunk at either end
// of 300,000 pending tasks, 87-110 ms for one in the middle, on a shared
// 2-core machine (BenchmarkRemoveQueuedBacklog).
func (p *Producer) RemoveQueued(ctx context.Context, queue string, ids []string) ([]Removal, error) {
	out := make([]Removal, 0, len(ids))
	prefix := queuePrefix(queue)
	for start := 0; start < len(ids); start += RemoveChunk {
		chunk := ids[start:min(start+RemoveChunk, len(ids))]
		keys := make([]string, 0, 2+len(chunk))
		args := make([]any, 0, 4+len(chunk))
		keys = append(keys, prefix+"pending", prefix+"groups")
		args = append(args, prefix, prefix+"g:", removedMarker, removePage)
		for _, id := range chunk {
			keys = append(keys, taskKey(queue, id))
			args = append(args, id)
		}
		res, err := p.remove.Run(ctx, p.rdb, keys, args...).Int64Slice()
		if err != nil {
			return out, fmt.Errorf("remove %d queued jobs from %s: %w", len(chunk), queue, err)
		}
		for _, r := range res {
			switch r {
			case 1:
				out = append(out, Removed)
			case -1:
				out = append(out, InFlight)
			default:
				out = append(out, NotQueued)
			}
		}
	}
	return out, nil
}
