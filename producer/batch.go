package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// MaxReportedProblems caps the line errors a BatchError lists.
const MaxReportedProblems = 100

// BatchOption adjusts EnqueueBatch.
type BatchOption func(*batchOptions)

type batchOptions struct {
	batchID  string
	progress func(done, total int)
	job      []EnqueueOption
}

// BatchID names the batch (default: a random "batch_..." id). Job ids are
// "<batch id>:<custom_id>", so enqueueing the same file under the same batch
// id again is a no-op.
func BatchID(id string) BatchOption { return func(o *batchOptions) { o.batchID = id } }

// Progress is called as jobs are submitted, with the count so far.
func Progress(fn func(done, total int)) BatchOption { return func(o *batchOptions) { o.progress = fn } }

// JobOptions applies enqueue options to every job of the batch.
func JobOptions(opts ...EnqueueOption) BatchOption {
	return func(o *batchOptions) { o.job = append(o.job, opts...) }
}

// BatchReport says what EnqueueBatch did.
type BatchReport struct {
	BatchID string
	// Jobs is the number of jobs in the input.
	Jobs int
	// Enqueued counts jobs newly enqueued; Duplicates counts jobs that were
	// enqueued before (by id) and left alone.
	Enqueued, Duplicates int
}

// BatchError is returned when the input has invalid lines: nothing of the
// batch was enqueued. Lines lists the first MaxReportedProblems problems.
type BatchError struct {
	Lines   []*jobs.LineError
	Invalid int
}

func (e *BatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "batch refused, nothing enqueued: %d invalid line(s)", e.Invalid)
	for _, l := range e.Lines {
		b.WriteString("\n  ")
		b.WriteString(l.Error())
	}
	if e.Invalid > len(e.Lines) {
		fmt.Fprintf(&b, "\n  … and %d more", e.Invalid-len(e.Lines))
	}
	return b.String()
}

// Is reports that a BatchError is a jobs.ErrInvalid.
func (e *BatchError) Is(target error) bool { return target == jobs.ErrInvalid }

type prepared struct {
	id   string
	line int
	task *asynq.Task
	opts []asynq.Option
}

// EnqueueBatch reads JSONL jobs (OpenAI Batch input lines or the short form)
// from r, validates every line first, and enqueues the batch only if all are
// valid; otherwise it returns a *BatchError with each problem's line and
// field path. Jobs are submitted in parallel; re-submitting is idempotent.
func (p *Producer) EnqueueBatch(ctx context.Context, r io.Reader, opts ...BatchOption) (*BatchReport, error) {
	bo := batchOptions{}
	for _, opt := range opts {
		opt(&bo)
	}
	if bo.batchID == "" {
		bo.batchID = "batch_" + randomID()
	}
	if err := (&jobs.Job{ID: "x", BatchID: bo.batchID, Body: []byte(`{"model":"m","messages":[{"role":"user","content":"x"}]}`)}).Validate(); err != nil {
		return nil, fmt.Errorf("batch id %q: %w", bo.batchID, err)
	}
	list, err := p.prepareBatch(bo, r)
	if err != nil {
		return nil, err
	}
	rep := &BatchReport{BatchID: bo.batchID, Jobs: len(list)}
	const chunk = 1000
	for i := 0; i < len(list); i += chunk {
		entries := make([]results.BatchEntry, 0, chunk)
		for _, pj := range list[i:min(i+chunk, len(list))] {
			entries = append(entries, results.BatchEntry{JobID: pj.id, Line: pj.line})
		}
		if _, err := p.store.AddToBatch(ctx, bo.batchID, entries); err != nil {
			return rep, err
		}
	}
	var enq, dup, done atomic.Int64
	work := make(chan prepared)
	errc := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range min(p.o.parallelism, max(1, len(list))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pj := range work {
				err := p.submit(ctx, pj.id, pj.task, pj.opts)
				switch {
				case errors.Is(err, ErrDuplicate):
					dup.Add(1)
				case err != nil:
					select {
					case errc <- err:
					default:
					}
					cancel()
					continue
				default:
					enq.Add(1)
				}
				n := done.Add(1)
				if bo.progress != nil && (n%256 == 0 || int(n) == len(list)) {
					bo.progress(int(n), len(list))
				}
			}
		}()
	}
send:
	for _, pj := range list {
		select {
		case work <- pj:
		case <-ctx.Done():
			break send
		}
	}
	close(work)
	wg.Wait()
	rep.Enqueued, rep.Duplicates = int(enq.Load()), int(dup.Load())
	select {
	case err := <-errc:
		return rep, fmt.Errorf("batch %q: %d of %d jobs submitted before: %w; submit the same input again with batch id %q (llmq enqueue FILE --batch %s): jobs already enqueued are skipped, a new batch id would run them twice",
			bo.batchID, rep.Enqueued+rep.Duplicates, len(list), err, bo.batchID, bo.batchID)
	default:
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("batch %q: %w", bo.batchID, err)
	}
	return rep, nil
}

// prepareBatch parses and validates every line of r.
func (p *Producer) prepareBatch(bo batchOptions, r io.Reader) ([]prepared, error) {
	jr := jobs.NewReader(r)
	berr := &BatchError{}
	fail := func(le *jobs.LineError) {
		berr.Invalid++
		if len(berr.Lines) < MaxReportedProblems {
			berr.Lines = append(berr.Lines, le)
		}
	}
	seen := map[string]int{}
	var list []prepared
	for {
		job, line, err := jr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		var le *jobs.LineError
		if errors.As(err, &le) {
			fail(le)
			if errors.Is(le, jobs.ErrLineTooLong) {
				break // the scanner cannot go on past an over-long line
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if job.CustomID == "" {
			job.CustomID = fmt.Sprintf("line-%d", line)
		}
		if first, ok := seen[job.CustomID]; ok {
			fail(&jobs.LineError{Line: line, Err: &jobs.ValidationError{Problems: []jobs.Problem{{Path: "custom_id",
				Message: fmt.Sprintf("%q repeats line %d; custom ids must be unique in a batch", job.CustomID, first)}}}})
			continue
		}
		seen[job.CustomID] = line
		if job.BatchID != "" && job.BatchID != bo.batchID {
			fail(&jobs.LineError{Line: line, Err: &jobs.ValidationError{Problems: []jobs.Problem{{Path: "batch_id",
				Message: fmt.Sprintf("%q differs from the batch being enqueued (%q)", job.BatchID, bo.batchID)}}}})
			continue
		}
		job.BatchID = bo.batchID
		if job.ID == "" {
			job.ID = bo.batchID + ":" + job.CustomID
		}
		task, opts, err := p.prepare(job, bo.job...)
		if err != nil {
			fail(&jobs.LineError{Line: line, Err: err})
			continue
		}
		list = append(list, prepared{id: job.ID, line: line, task: task, opts: opts})
	}
	if berr.Invalid > 0 {
		return nil, berr
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("batch %q: %w: the input holds no jobs", bo.batchID, jobs.ErrInvalid)
	}
	return list, nil
}
