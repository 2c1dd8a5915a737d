// Package producer is the Go client backend services use to hand llmq jobs:
// enqueue one job or a JSONL batch (validated first, so nothing invalid
// reaches Redis; idempotent by job id), follow a batch's progress, and read
// or wait for results.
package producer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/redisconn"
	"github.com/llmq/llmq/results"
)

// RetryMargin is worker.RetryMargin, whose doc says why asynq needs it:
// tasks are enqueued with MaxRetry(attempts + RetryMargin). The producer
// does not import worker (its dependencies); the worker's tests check that
// the two agree.
const RetryMargin = 10

// ErrDuplicate is returned (with the job id) when a job with the same id was
// enqueued before: the call was a no-op.
var ErrDuplicate = errors.New("job already enqueued")

// Producer enqueues jobs and reads their results. It is safe for concurrent
// use. Close it when done.
type Producer struct {
	client *asynq.Client
	insp   *asynq.Inspector
	rdb    redis.UniversalClient
	store  *results.Store
	remove *redis.Script // remove.lua, for RemoveQueued
	o      options

	mu       sync.RWMutex
	queues   []string        // queues enqueued to, the default first: read first by Result and Wait
	queueSet map[string]bool // the same as a set
}

type options struct {
	queue         string
	prefix        string
	attempts      int
	retention     time.Duration
	resultTTL     time.Duration
	callTimeout   time.Duration
	fallbackTiers int
	parallelism   int
}

// Defaults of the options. Those a worker shares are the workers' own
// defaults (worker, policy, config), restated because the producer does
// not import them; config's tests check that they agree.
const (
	// DefaultQueue is the asynq queue jobs go to (worker.DefaultQueue).
	DefaultQueue = "llmq"
	// DefaultPrefix namespaces llmq's records (worker.DefaultPrefix).
	DefaultPrefix = "llmq"
	// DefaultAttempts is a job's attempts when it sets none
	// (policy.DefaultAttempts).
	DefaultAttempts = 5
	// DefaultRetention is how long asynq keeps a finished task
	// (config.DefaultRetention).
	DefaultRetention = 24 * time.Hour
	// DefaultResultTTL is how long batch records are kept
	// (worker.DefaultResultTTL).
	DefaultResultTTL = 7 * 24 * time.Hour
	// DefaultParallelism is how many enqueues a batch keeps in flight.
	DefaultParallelism = 32
)

// Option configures a Producer.
type Option func(*options)

// WithQueue sets the default asynq queue (default DefaultQueue).
func WithQueue(name string) Option { return func(o *options) { o.queue = name } }

// WithPrefix sets the key prefix of llmq's records (default DefaultPrefix); it must
// match the workers'.
func WithPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// WithAttempts sets the default attempts per job (default DefaultAttempts).
func WithAttempts(n int) Option { return func(o *options) { o.attempts = n } }

// WithRetention sets how long asynq keeps a finished task, so asynqmon can
// show its result (default DefaultRetention).
func WithRetention(d time.Duration) Option { return func(o *options) { o.retention = d } }

// WithResultTTL sets how long batch records are kept (default DefaultResultTTL); it
// should match the workers' result TTL.
func WithResultTTL(d time.Duration) Option { return func(o *options) { o.resultTTL = d } }

// WithParallelism sets how many enqueues a batch keeps in flight (default
// DefaultParallelism).
func WithParallelism(n int) Option { return func(o *options) { o.parallelism = n } }

// Open connects a Producer to the Redis at url: redis://, rediss://,
// unix://, redis+sentinel:// or redis+cluster:// (the forms of package
// redisconn), e.g. "redis://:password@10.0.0.5:6379/0". Its errors never
// show the URL's password. Like New it does not dial: the first enqueue
// or read does.
func Open(url string, opts ...Option) (*Producer, error) {
	conn, err := redisconn.Parse(url)
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return New(conn.AsynqOpt(), opts...)
}

// New connects a Producer to the Redis that asynq uses, given as asynq's
// connection option (Open takes a URL).
func New(redisOpt asynq.RedisConnOpt, opts ...Option) (*Producer, error) {
	o := options{queue: DefaultQueue, prefix: DefaultPrefix, attempts: DefaultAttempts, retention: DefaultRetention,
		resultTTL: DefaultResultTTL, callTimeout: DefaultCallTimeout, fallbackTiers: DefaultFallbackTiers, parallelism: DefaultParallelism}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.queue == "":
		return nil, errors.New("producer: queue must not be empty")
	case o.attempts < 1 || o.attempts > jobs.MaxAttempts:
		return nil, fmt.Errorf("producer: attempts must be between 1 and %d, got %d", jobs.MaxAttempts, o.attempts)
	case o.parallelism < 1:
		return nil, fmt.Errorf("producer: parallelism must be at least 1, got %d", o.parallelism)
	case o.callTimeout <= 0:
		return nil, fmt.Errorf("producer: call timeout must be positive, got %v", o.callTimeout)
	case o.fallbackTiers < 0:
		return nil, fmt.Errorf("producer: fallback tiers must be at least 0, got %d", o.fallbackTiers)
	}
	rdb, ok := redisOpt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("producer: redis option did not make a go-redis v9 client")
	}
	return &Producer{
		client:   asynq.NewClientFromRedisClient(rdb),
		insp:     asynq.NewInspectorFromRedisClient(rdb),
		rdb:      rdb,
		store:    results.NewStore(rdb, o.prefix, o.resultTTL),
		remove:   redis.NewScript(removeLua),
		o:        o,
		queues:   []string{o.queue},
		queueSet: map[string]bool{o.queue: true},
	}, nil
}

// Close releases the Redis connections.
func (p *Producer) Close() error {
	return p.rdb.Close()
}

// EnqueueOption adjusts one enqueue.
type EnqueueOption func(*enqueueOptions)

type enqueueOptions struct {
	queue     string
	attempts  int
	deadline  time.Time
	processAt time.Time
	// validated: the job passed validation with these options already
	// (EnqueueBatch's second read of an Immutable input).
	validated bool
}

// Queue sends the job to another asynq queue. Queues are how llmq does
// priority: workers weigh queues (worker.queues in the configuration).
func Queue(name string) EnqueueOption { return func(o *enqueueOptions) { o.queue = name } }

// MaxAttempts sets the job's attempts (upstream calls that may fail), at
// most jobs.MaxAttempts; a larger or negative value fails validation.
func MaxAttempts(n int) EnqueueOption { return func(o *enqueueOptions) { o.attempts = n } }

// Deadline sets the instant after which the job is not tried again.
func Deadline(t time.Time) EnqueueOption { return func(o *enqueueOptions) { o.deadline = t } }

// ProcessAt delays the job's first attempt until t.
func ProcessAt(t time.Time) EnqueueOption { return func(o *enqueueOptions) { o.processAt = t } }

// Enqueue validates job and enqueues it. A job without an ID gets a random
// one. It returns the job id; for an id enqueued before it returns the id and
// an error matching ErrDuplicate, and changes nothing. An invalid job returns
// a *jobs.ValidationError listing every problem with its field path. A job
// with a BatchID whose id already belongs to another batch's job is not
// added to the batch; the error is a *ConflictError (ErrConflict).
func (p *Producer) Enqueue(ctx context.Context, job *jobs.Job, opts ...EnqueueOption) (string, error) {
	if job.ID == "" {
		job.ID = "job_" + randomID()
	}
	pj, err := p.prepare(job, opts...)
	if err != nil {
		return job.ID, err
	}
	if job.BatchID != "" {
		if _, err := p.store.AddToBatch(ctx, job.BatchID, []results.BatchEntry{{JobID: job.ID}}); err != nil {
			return job.ID, err
		}
	}
	err = p.submitOwned(ctx, job.BatchID, pj)
	if errors.Is(err, ErrConflict) {
		if rerr := p.store.RemoveFromBatch(ctx, job.BatchID, []string{job.ID}); rerr != nil {
			return job.ID, rerr
		}
	}
	return job.ID, err
}

// prepare applies opts to job, validates it and builds its asynq task.
func (p *Producer) prepare(job *jobs.Job, opts ...EnqueueOption) (prepared, error) {
	eo := enqueueOptions{queue: p.o.queue}
	for _, opt := range opts {
		opt(&eo)
	}
	if !eo.deadline.IsZero() {
		job.Deadline = eo.deadline
	}
	if eo.attempts != 0 {
		job.MaxAttempts = eo.attempts
	}
	if !eo.validated {
		if err := job.Validate(); err != nil {
			return prepared{}, err
		}
	}
	if job.MaxAttempts == 0 {
		// The job carries its attempts, so the worker counts against the
		// same number the producer chose.
		job.MaxAttempts = p.o.attempts
	}
	payload, err := job.Encode()
	if err != nil {
		return prepared{}, err
	}
	// The worker enforces the job's attempts itself. asynq checks "retries
	// exhausted" before it asks whether an error is a failure, and it also
	// counts crashes (lease expiry), task timeouts and panics as retries, so
	// MaxRetry keeps a margin above the job's attempts: a snooze (rate
	// limited, hold, budget wait, open breaker) never archives a job.
	taskOpts := []asynq.Option{asynq.TaskID(job.ID), asynq.Queue(eo.queue), asynq.MaxRetry(job.MaxAttempts + RetryMargin),
		asynq.Retention(p.o.retention), asynq.Timeout(p.taskTimeout(job))}
	if !eo.processAt.IsZero() {
		taskOpts = append(taskOpts, asynq.ProcessAt(eo.processAt))
	}
	return prepared{id: job.ID, queue: eo.queue, task: asynq.NewTask(jobs.TaskType, payload), opts: taskOpts}, nil
}

// submit enqueues a prepared task.
func (p *Producer) submit(ctx context.Context, pj prepared) error {
	p.used(pj.queue)
	_, err := p.client.EnqueueContext(ctx, pj.task, pj.opts...)
	switch {
	case errors.Is(err, asynq.ErrTaskIDConflict):
		return fmt.Errorf("job %q: %w", pj.id, ErrDuplicate)
	case err != nil:
		return fmt.Errorf("enqueue job %q: %w", pj.id, err)
	}
	return nil
}

// submitOwned enqueues a prepared task of batch batchID. When a task with
// the same id exists, it reads that task's batch: the same batch gives
// ErrDuplicate (a re-submission), another batch a *ConflictError, so a
// batch never counts (and nobody waits on) a job that is not its own.
func (p *Producer) submitOwned(ctx context.Context, batchID string, pj prepared) error {
	const tries = 3 // the existing task may finish and be removed between the calls
	var err error
	for range tries {
		err = p.submit(ctx, pj)
		if !errors.Is(err, ErrDuplicate) {
			return err
		}
		owner, found, ierr := p.owner(pj.queue, pj.id)
		if ierr != nil {
			return ierr
		}
		if !found {
			continue
		}
		if owner != batchID {
			return &ConflictError{BatchID: batchID, Count: 1, Jobs: []Conflict{{JobID: pj.id, Owner: owner}}}
		}
		return err
	}
	return err
}

// owner returns the batch id of the task id in queue; found is false when
// there is no such task.
func (p *Producer) owner(queue, id string) (batchID string, found bool, err error) {
	ti, err := p.insp.GetTaskInfo(queue, id)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read job %q: %w", id, err)
	}
	var j struct {
		BatchID string `json:"batch_id"`
	}
	if err := json.Unmarshal(ti.Payload, &j); err != nil {
		return "", true, fmt.Errorf("read job %q: decode payload: %w", id, err)
	}
	return j.BatchID, true, nil
}

// Batch returns a batch's progress.
func (p *Producer) Batch(ctx context.Context, batchID string) (results.BatchStatus, error) {
	return p.store.Batch(ctx, batchID)
}

// Store returns the result store the producer reads.
func (p *Producer) Store() *results.Store { return p.store }

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
