package producer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// ErrNotFound is matched by the error of Result and Wait for a job id that
// names no job: never enqueued (in any queue of this Redis), deleted before
// it finished (a dead letter deleted, a cancelled batch), or whose records
// have expired; also for a job whose task ended but whose result is gone
// (results kept for less time than asynq keeps tasks).
var ErrNotFound = errors.New("job not found")

// ErrPending is matched by the error of Result for a job that is enqueued
// but has no result yet (Wait waits for it instead).
var ErrPending = errors.New("job has no result yet")

// Wait polling: the first delay, doubled after every look up to the last.
const (
	waitFirstPoll = 20 * time.Millisecond
	waitMaxPoll   = time.Second
)

// asynq's own keys, which the look-up reads directly so that a pending job
// costs one round trip (asynq's Inspector takes two per queue and decodes
// the task). They are asynq v0.26's internal/base.TaskKey and AllQueues;
// TestTaskKeyIsAsynqs checks them against a task asynq enqueued.
const asynqQueuesKey = "asynq:queues"

func taskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// asynq task states after which no handler runs again unless an operator
// acts (asynq internal/base.TaskState strings).
const (
	taskCompleted = "completed"
	taskArchived  = "archived"
)

// Result returns the stored result of a job (succeeded or failed). A job
// that is enqueued but has none yet gives an error matching ErrPending; an
// id that names no job gives one matching ErrNotFound.
func (p *Producer) Result(ctx context.Context, id string) (*jobs.Result, error) {
	return p.lookup(ctx, id)
}

// Wait blocks until the job has a result (succeeded or failed) and returns
// it, or until ctx ends. For an id that names no job it returns at once an
// error matching ErrNotFound — also when the job is deleted while Wait
// waits. A job counts as enqueued once Enqueue (or EnqueueBatch) returned.
func (p *Producer) Wait(ctx context.Context, id string) (*jobs.Result, error) {
	delay := waitFirstPoll
	for {
		r, err := p.lookup(ctx, id)
		if !errors.Is(err, ErrPending) {
			return r, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for job %q: %w", id, ctx.Err())
		case <-t.C:
		}
		delay = min(delay*2, waitMaxPoll)
	}
}

// lookup returns the job's result, or an error matching ErrPending or
// ErrNotFound. It reads the result and the job's asynq task state in one
// round trip (the queues this producer enqueued to); only for an id found
// in neither does it look through every asynq queue and read the result
// again.
//
// Order makes it exact: a worker stores a result before its task is
// completed or deleted, so a result missed by the first read while the
// task was already gone is found by the last one, which starts after the
// task reads have answered (on Redis Cluster the reads of one pipeline may
// run on different nodes in any order).
func (p *Producer) lookup(ctx context.Context, id string) (*jobs.Result, error) {
	r, state, err := p.readJob(ctx, id, p.knownQueues())
	if r != nil || err != nil {
		return r, err
	}
	if state == "" {
		queues, err := p.rdb.SMembers(ctx, asynqQueuesKey).Result()
		if err != nil {
			return nil, fmt.Errorf("read job %q: list queues: %w", id, err)
		}
		if state, err = p.taskState(ctx, id, p.unknownQueues(queues)); err != nil {
			return nil, err
		}
	}
	switch state {
	case "":
		return p.finalRead(ctx, id, "")
	case taskCompleted, taskArchived:
		// A worker stores every job's result before its task ends; the
		// first read may have run before that.
		return p.finalRead(ctx, id, state)
	}
	return nil, fmt.Errorf("job %q (%s): %w", id, state, ErrPending)
}

// readJob reads, in one round trip, the job's result and its task's state
// in each of queues. r is the result when there is one; state is the first
// state found ("" when no queue holds the task).
func (p *Producer) readJob(ctx context.Context, id string, queues []string) (r *jobs.Result, state string, err error) {
	pipe := p.rdb.Pipeline()
	get := p.store.GetIn(ctx, pipe, id)
	states := p.queueStates(ctx, pipe, id, queues)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("read job %q: %w", id, err)
	}
	r, err = get()
	switch {
	case err == nil:
		return r, "", nil
	case !errors.Is(err, results.ErrNotFound):
		return nil, "", err
	}
	state, err = states()
	return nil, state, err
}

// taskState reads the state of the job's task in each of queues in one
// round trip: the first state found, "" when there is none.
func (p *Producer) taskState(ctx context.Context, id string, queues []string) (string, error) {
	if len(queues) == 0 {
		return "", nil
	}
	pipe := p.rdb.Pipeline()
	states := p.queueStates(ctx, pipe, id, queues)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("read job %q: %w", id, err)
	}
	return states()
}

// queueStates queues on pipe a read of the job's task state in each of
// queues; the returned function, called after pipe.Exec, gives the first
// state found.
func (p *Producer) queueStates(ctx context.Context, pipe redis.Pipeliner, id string, queues []string) func() (string, error) {
	cmds := make([]*redis.StringCmd, len(queues))
	for i, q := range queues {
		cmds[i] = pipe.HGet(ctx, taskKey(q, id), "state")
	}
	return func() (string, error) {
		for _, c := range cmds {
			s, err := c.Result()
			switch {
			case err == nil && s != "":
				return s, nil
			case err != nil && !errors.Is(err, redis.Nil):
				return "", fmt.Errorf("read job %q: %w", id, err)
			}
		}
		return "", nil
	}
}

// finalRead reads the result once more after the task was found ended in
// state (or, for "", found nowhere): the result, or ErrNotFound.
func (p *Producer) finalRead(ctx context.Context, id, state string) (*jobs.Result, error) {
	r, err := p.store.Get(ctx, id)
	switch {
	case err == nil:
		return r, nil
	case !errors.Is(err, results.ErrNotFound):
		return nil, err
	case state != "":
		return nil, fmt.Errorf("job %q: %w: its task is %s but no result is stored (expired before the task, or never written)", id, ErrNotFound, state)
	}
	return nil, fmt.Errorf("job %q: %w", id, ErrNotFound)
}

// knownQueues returns the queues this producer enqueued to, its default
// queue first.
func (p *Producer) knownQueues() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]string(nil), p.queues...)
}

// unknownQueues returns the queues of all that this producer did not
// enqueue to.
func (p *Producer) unknownQueues(all []string) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out []string
	for _, q := range all {
		if !p.queueSet[q] {
			out = append(out, q)
		}
	}
	return out
}

// used records that the producer enqueued to queue, so its look-ups read
// the queue in their first round trip.
func (p *Producer) used(queue string) {
	p.mu.RLock()
	known := p.queueSet[queue]
	p.mu.RUnlock()
	if known {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.queueSet[queue] {
		p.queueSet[queue] = true
		p.queues = append(p.queues, queue)
	}
}
