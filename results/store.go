// Package results stores one result record per job id in Redis and keeps the
// per-batch index and counters that progress bars and exports read. Saving
// is idempotent: a job that runs twice (at-least-once delivery, a crash after
// the upstream call) still has exactly one result, and a batch's counters
// count it once.
package results

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
)

// ErrNotFound is returned when a job has no stored result (yet).
var ErrNotFound = errors.New("result not found")

// notFoundError is ErrNotFound for one job. The worker's gate meets it
// for nearly every job (no result yet: the common case), so it is a
// small value formatted only when printed.
type notFoundError struct{ jobID string }

func notFound(jobID string) error { return &notFoundError{jobID} }

func (e *notFoundError) Error() string { return fmt.Sprintf("job %q: %v", e.jobID, ErrNotFound) }

func (e *notFoundError) Unwrap() error { return ErrNotFound }

//go:embed save.lua
var saveLua string

//go:embed count.lua
var countLua string

//go:embed register.lua
var registerLua string

//go:embed unregister.lua
var unregisterLua string

// Store reads and writes result records. It is safe for concurrent use.
type Store struct {
	rdb        redis.UniversalClient
	prefix     string
	ttl        time.Duration
	save       *redis.Script
	count      *redis.Script
	register   *redis.Script
	unregister *redis.Script
}

// NewStore returns a Store whose keys start with prefix and expire after ttl.
func NewStore(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Store {
	return &Store{rdb: rdb, prefix: prefix, ttl: ttl, save: redis.NewScript(saveLua), count: redis.NewScript(countLua),
		register: redis.NewScript(registerLua), unregister: redis.NewScript(unregisterLua)}
}

func (s *Store) resultKey(jobID string) string  { return s.prefix + ":result:" + jobID }
func (s *Store) batchKey(batchID string) string { return s.prefix + ":batch:{" + batchID + "}" }
func (s *Store) batchStatusKey(batchID string) string {
	return s.prefix + ":batch:{" + batchID + "}:status"
}
func (s *Store) batchJobsKey(batchID string) string {
	return s.prefix + ":batch:{" + batchID + "}:jobs"
}

// Transition says what a Save changed.
type Transition string

// Transitions returned by Save.
const (
	// Created: the job had no result; this one is stored.
	Created Transition = "created"
	// Replaced: a failed result was replaced (by a success after a requeue,
	// or by a later failure).
	Replaced Transition = "replaced"
	// Kept: the job already had a successful result; nothing changed.
	Kept Transition = "kept"
)

// Save stores r unless the job already has a successful result, and keeps
// the batch counters exact: each job counts once, as succeeded or failed.
// A job's first result is stored and, for a success, counted in one round
// trip, with whatever the options add (see With); a job that has a result
// already takes one more (save.lua decides), and a failure's count follows
// its save, since it depends on what the save found.
func (s *Store) Save(ctx context.Context, r *jobs.Result, opts ...SaveOption) (Transition, error) {
	b, err := encodeRecord(r)
	if err != nil {
		return "", fmt.Errorf("save result %q: encode: %w", r.JobID, err)
	}
	var o saveOptions
	for _, opt := range opts {
		opt(&o)
	}
	countNow := r.Status == jobs.StatusSucceeded && r.BatchID != ""
	t, err := s.saveIn(ctx, r, b, countNow, o.with)
	if err != nil || r.BatchID == "" || countNow {
		return t, err
	}
	status := r.Status
	if t == Kept {
		status = jobs.StatusSucceeded
	}
	if err := s.Count(ctx, r.BatchID, r.JobID, status); err != nil {
		return t, fmt.Errorf("save result %q: %w", r.JobID, err)
	}
	return t, nil
}

// Count records a job's final status in its batch counters. It is
// idempotent, so it is safe to repeat: a command re-sent after a lost reply,
// or a redelivered job whose result was stored before a crash, counts once.
// The counters live under the batch's hash tag, apart from the result key,
// so Save runs it as a second script (Redis Cluster safe); a crash between
// the two is repaired when the job is seen again.
func (s *Store) Count(ctx context.Context, batchID, jobID, status string) error {
	err := s.count.Run(ctx, s.rdb, []string{s.batchKey(batchID), s.batchStatusKey(batchID)}, jobID, status, s.ttl.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("count job %q in batch %q: %w", jobID, batchID, err)
	}
	return nil
}

func parseTransition(s string) Transition {
	switch {
	case s == "created":
		return Created
	case s == "kept":
		return Kept
	case strings.HasPrefix(s, "replaced"):
		return Replaced
	}
	return Transition(s)
}

// validUTF8 returns a JSON record with any invalid UTF-8 replaced by
// U+FFFD. encoding/json coerces strings but copies a json.RawMessage (a
// response body) byte for byte; in valid JSON such bytes can only sit in
// strings, so the record stays the same JSON. Records are stored and read
// through it, so an export is always valid UTF-8 JSON lines.
func validUTF8(b []byte) []byte {
	if utf8.Valid(b) {
		return b
	}
	return bytes.ToValidUTF8(b, []byte("\uFFFD"))
}

// Get returns the stored result of a job, or ErrNotFound.
func (s *Store) Get(ctx context.Context, jobID string) (*jobs.Result, error) {
	b, err := s.rdb.Get(ctx, s.resultKey(jobID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, notFound(jobID)
	}
	if err != nil {
		return nil, fmt.Errorf("read result %q: %w", jobID, err)
	}
	var r jobs.Result
	if err := json.Unmarshal(validUTF8(b), &r); err != nil {
		return nil, fmt.Errorf("decode result %q: %w", jobID, err)
	}
	return &r, nil
}

// BatchEntry is one job registered in a batch: its id and its position in
// the input (line number), which orders the export.
type BatchEntry struct {
	JobID string
	Line  int
}

// AddToBatch registers jobs in a batch's index and returns how many were
// new; the batch total grows by that many. Registering a job twice is a
// no-op, so re-submitting a batch file does not inflate its total.
func (s *Store) AddToBatch(ctx context.Context, batchID string, entries []BatchEntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	args := make([]any, 0, 2+2*len(entries))
	args = append(args, s.ttl.Milliseconds(), time.Now().UTC().Format(time.RFC3339))
	for _, e := range entries {
		args = append(args, e.Line, e.JobID)
	}
	added, err := s.register.Run(ctx, s.rdb, []string{s.batchKey(batchID), s.batchJobsKey(batchID)}, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("register %d jobs in batch %q: %w", len(entries), batchID, err)
	}
	return added, nil
}

// BatchStatus is a batch's progress.
type BatchStatus struct {
	BatchID   string `json:"batch_id"`
	Total     int    `json:"total"`
	Succeeded int    `json:"succeeded"`
	Failed    int    `json:"failed"`
}

// Done reports whether every job of the batch has a result.
func (b BatchStatus) Done() bool { return b.Total > 0 && b.Succeeded+b.Failed >= b.Total }

// Pending is the number of jobs without a result yet.
func (b BatchStatus) Pending() int { return max(0, b.Total-b.Succeeded-b.Failed) }

// Batch returns a batch's progress counters. An unknown batch is an error.
func (s *Store) Batch(ctx context.Context, batchID string) (BatchStatus, error) {
	m, err := s.rdb.HGetAll(ctx, s.batchKey(batchID)).Result()
	if err != nil {
		return BatchStatus{}, fmt.Errorf("read batch %q: %w", batchID, err)
	}
	if len(m) == 0 {
		return BatchStatus{}, fmt.Errorf("batch %q: %w (unknown batch id, or its records expired)", batchID, ErrNotFound)
	}
	atoi := func(k string) int { n, _ := strconv.Atoi(m[k]); return n }
	return BatchStatus{BatchID: batchID, Total: atoi("total"), Succeeded: atoi(jobs.StatusSucceeded), Failed: atoi(jobs.StatusFailed)}, nil
}

// Export calls fn for every job of a batch in input order: with the stored
// result, or with nil and the job id when the job has no result yet. It
// reads in pages, so a batch of any size uses bounded memory.
func (s *Store) Export(ctx context.Context, batchID string, fn func(jobID string, r *jobs.Result) error) error {
	const page = 500
	for start := int64(0); ; start += page {
		ids, err := s.rdb.ZRange(ctx, s.batchJobsKey(batchID), start, start+page-1).Result()
		if err != nil {
			return fmt.Errorf("export batch %q: list jobs: %w", batchID, err)
		}
		if len(ids) == 0 {
			return nil
		}
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = s.resultKey(id)
		}
		vals, err := s.mget(ctx, keys)
		if err != nil {
			return fmt.Errorf("export batch %q: read results: %w", batchID, err)
		}
		for i, v := range vals {
			var r *jobs.Result
			if v != "" {
				r = &jobs.Result{}
				if err := json.Unmarshal(validUTF8([]byte(v)), r); err != nil {
					return fmt.Errorf("export batch %q: decode result %q: %w", batchID, ids[i], err)
				}
			}
			if err := fn(ids[i], r); err != nil {
				return err
			}
		}
	}
}

// mget reads keys with one GET each in a pipeline (MGET would need every key
// in one slot on Redis Cluster).
func (s *Store) mget(ctx context.Context, keys []string) ([]string, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]string, len(keys))
	for i, c := range cmds {
		v, err := c.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// RemoveFromBatch takes jobs out of a batch's index (they turned out to
// belong to another batch) and shrinks its total by the number removed.
func (s *Store) RemoveFromBatch(ctx context.Context, batchID string, jobIDs []string) error {
	if len(jobIDs) == 0 {
		return nil
	}
	args := make([]any, len(jobIDs))
	for i, id := range jobIDs {
		args[i] = id
	}
	if err := s.unregister.Run(ctx, s.rdb, []string{s.batchKey(batchID), s.batchJobsKey(batchID)}, args...).Err(); err != nil {
		return fmt.Errorf("remove %d jobs from batch %q: %w", len(jobIDs), batchID, err)
	}
	return nil
}
