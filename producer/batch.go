package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// MaxReportedProblems caps the line errors a BatchError lists, and the
// conflicts a ConflictError lists.
const MaxReportedProblems = 100

// RegisterChunk is how many job ids one Redis call registers in a batch's
// index.
const RegisterChunk = 1000

// BatchOption adjusts EnqueueBatch.
type BatchOption func(*batchOptions)

type batchOptions struct {
	immutable bool
	batchID   string
	progress  func(done, total int)
	job       []EnqueueOption
	spoolDir  string
	maxJobs   int
	check     func(*jobs.Job) error
	onProblem func(*jobs.LineError)
}

// BatchID names the batch (default: a random "batch_..." id). A batch id
// uses only the characters of jobs.BatchIDAlphabet. Job ids are
// jobs.JobID(batch id, custom_id), so enqueueing the same file under the
// same batch id again is a no-op.
func BatchID(id string) BatchOption { return func(o *batchOptions) { o.batchID = id } }

// Progress is called as jobs are submitted, with the count so far.
func Progress(fn func(done, total int)) BatchOption { return func(o *batchOptions) { o.progress = fn } }

// JobOptions applies enqueue options to every job of the batch.
func JobOptions(opts ...EnqueueOption) BatchOption {
	return func(o *batchOptions) { o.job = append(o.job, opts...) }
}

// SpoolDir sets where EnqueueBatch keeps a copy of an input it cannot seek
// (a pipe, stdin) between its passes (default: os.TempDir()).
func SpoolDir(dir string) BatchOption { return func(o *batchOptions) { o.spoolDir = dir } }

// Immutable tells EnqueueBatch that its input reads the same bytes both
// times (a stored file nobody writes), so the jobs validated on the first
// read are not validated again on the second (which otherwise catches an
// input that changed in between). It saves most of the second read's CPU.
func Immutable() BatchOption { return func(o *batchOptions) { o.immutable = true } }

// MaxJobs refuses an input of more than n requests (non-blank lines,
// valid or not): reading stops at request n+1, and EnqueueBatch returns a
// *BatchError whose TooMany is n, so memory stays bounded whatever the
// input's size. 0 (the default) sets no limit.
func MaxJobs(n int) BatchOption { return func(o *batchOptions) { o.maxJobs = n } }

// CheckLine adds fn to the validation of every line: it sees the job as
// parsed, before EnqueueBatch fills in a custom_id, the batch id and the
// job id; an error makes the line invalid (a *jobs.LineError wrapping it).
func CheckLine(fn func(job *jobs.Job) error) BatchOption {
	return func(o *batchOptions) { o.check = fn }
}

// OnProblem calls fn with each invalid line's problem, in input order, as
// validation finds it: every one, where BatchError lists the first
// MaxReportedProblems.
func OnProblem(fn func(*jobs.LineError)) BatchOption {
	return func(o *batchOptions) { o.onProblem = fn }
}

// ErrNoJobs is matched (with jobs.ErrInvalid) by the error of an input
// without a single job.
var ErrNoJobs = errors.New("the input holds no jobs")

// ErrDuplicateCustomID is matched by the problem of a line whose custom_id
// an earlier line has (the problem is also a *jobs.ValidationError).
var ErrDuplicateCustomID = errors.New("duplicate custom_id")

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
	// TooMany is the MaxJobs limit when the input holds more requests
	// (reading stopped there, so Lines covers the lines before it); else 0.
	TooMany int
}

func (e *BatchError) Error() string {
	var b strings.Builder
	b.WriteString("batch refused, nothing enqueued:")
	if e.TooMany > 0 {
		fmt.Fprintf(&b, " more than %d requests;", e.TooMany)
	}
	fmt.Fprintf(&b, " %d invalid line(s)", e.Invalid)
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

// IncompleteError is returned when a batch was registered but not every job
// was submitted (the context ended, Redis failed). Submitting the same input
// again under BatchID finishes it: jobs already enqueued are skipped, the
// others are enqueued. A new batch id would run them twice.
type IncompleteError struct {
	BatchID string
	// Submitted counts the jobs enqueued (or found enqueued) of Jobs.
	Submitted, Jobs int
	Err             error
}

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("batch %q incomplete: %d of %d jobs submitted: %v", e.BatchID, e.Submitted, e.Jobs, e.Err)
}

// Unwrap returns the cause.
func (e *IncompleteError) Unwrap() error { return e.Err }

// ErrConflict is matched by an error whose job id already belongs to
// another batch.
var ErrConflict = errors.New("job id belongs to another batch")

// Conflict is one job whose id is taken by another batch's job.
type Conflict struct {
	// Line is the job's input line (0 for Enqueue).
	Line  int
	JobID string
	// Owner is the batch the id belongs to.
	Owner string
}

// ConflictError is returned when jobs could not be enqueued because their
// explicit ids already belong to jobs of other batches. Those jobs are not
// part of the batch (its total does not count them, so waiting for it ends);
// every other job was enqueued. Jobs lists the first MaxReportedProblems.
type ConflictError struct {
	BatchID string
	Jobs    []Conflict
	Count   int
}

func (e *ConflictError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "batch %q: %d job(s) not enqueued: their ids belong to other batches", e.BatchID, e.Count)
	for _, c := range e.Jobs {
		b.WriteString("\n  ")
		if c.Line > 0 {
			fmt.Fprintf(&b, "line %d: ", c.Line)
		}
		fmt.Fprintf(&b, "id %q belongs to batch %q", c.JobID, c.Owner)
	}
	if e.Count > len(e.Jobs) {
		fmt.Fprintf(&b, "\n  … and %d more", e.Count-len(e.Jobs))
	}
	return b.String()
}

// Is reports that a ConflictError is an ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// prepared is one job ready to submit.
type prepared struct {
	id    string
	line  int
	queue string
	task  *asynq.Task
	opts  []asynq.Option
}

// EnqueueBatch reads JSONL jobs (OpenAI Batch input lines or the short form)
// from r, validates every line first, and enqueues the batch only if all are
// valid; otherwise it returns a *BatchError with each problem's line and
// field path. It streams: the input is read once to validate and once to
// submit (an input that cannot seek is copied to a temporary file first),
// so memory grows with the number of jobs (their ids; MaxJobs bounds it),
// not with the input's size. Jobs are registered in the batch, then
// submitted in parallel; re-submitting is idempotent. After registration
// any failure is an *IncompleteError; jobs whose ids belong to other
// batches are left out and reported as a *ConflictError.
func (p *Producer) EnqueueBatch(ctx context.Context, r io.Reader, opts ...BatchOption) (*BatchReport, error) {
	bo := batchOptions{}
	for _, opt := range opts {
		opt(&bo)
	}
	if bo.batchID == "" {
		bo.batchID = "batch_" + randomID()
	}
	if err := jobs.CheckBatchID(bo.batchID); err != nil {
		return nil, fmt.Errorf("batch id: %w", err)
	}
	src, cleanup, err := rewindable(r, bo.spoolDir)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	entries, err := p.validateBatch(ctx, bo, src.first)
	if err != nil {
		return nil, err
	}
	rep := &BatchReport{BatchID: bo.batchID, Jobs: len(entries)}
	incomplete := func(err error) error {
		return &IncompleteError{BatchID: bo.batchID, Submitted: rep.Enqueued + rep.Duplicates, Jobs: rep.Jobs, Err: err}
	}
	for i := 0; i < len(entries); i += RegisterChunk {
		if err := ctx.Err(); err != nil {
			return rep, incomplete(err)
		}
		if _, err := p.store.AddToBatch(ctx, bo.batchID, entries[i:min(i+RegisterChunk, len(entries))]); err != nil {
			return rep, incomplete(err)
		}
	}
	second, err := src.again()
	if err != nil {
		return rep, incomplete(err)
	}
	if bo.immutable { // validated on the first read: the second builds tasks only
		bo.job = append(slices.Clip(bo.job), func(o *enqueueOptions) { o.validated = true })
	}
	conflicts, err := p.submitBatch(ctx, bo, second, rep)
	if err != nil {
		return rep, incomplete(err)
	}
	if conflicts.Count > 0 {
		ids := make([]string, 0, conflicts.Count)
		for _, c := range conflicts.all {
			ids = append(ids, c.JobID)
		}
		if err := p.store.RemoveFromBatch(ctx, bo.batchID, ids); err != nil {
			return rep, err
		}
		rep.Jobs -= conflicts.Count
		return rep, &conflicts.ConflictError
	}
	return rep, nil
}

// lineJobs reads the jobs of a batch input, each with custom_id "line-N"
// when its line sets none. Both passes use it (then batchJob or
// preparedBatchJob), so they agree on every job.
type lineJobs struct {
	r *jobs.Reader
}

func (l *lineJobs) next() (*jobs.Job, int, error) {
	job, line, err := l.r.Next()
	if err != nil {
		return nil, line, err
	}
	fillCustomID(job, line)
	return job, line, nil
}

// fillCustomID names a job whose line sets no custom_id "line-N".
func fillCustomID(job *jobs.Job, line int) {
	if job.CustomID == "" {
		job.CustomID = fmt.Sprintf("line-%d", line)
	}
}

// markedError is a validation problem that also matches a sentinel.
type markedError struct {
	*jobs.ValidationError
	mark error
}

func (e markedError) Is(target error) bool { return target == e.mark }
func (e markedError) Unwrap() error        { return e.ValidationError }

// verdict is what validation found of one line: its job id, or its
// problem.
type verdict struct {
	line     int
	id       string
	explicit bool // the line set the id
	problem  *jobs.LineError
}

// validateBatch parses and validates every line of r and returns the
// batch's entries (job id and line) in input order, or a *BatchError.
// When ctx ends it returns at once with an error matching ctx.Err(): its
// goroutines stop at their next line, and a Read of r that is blocked (a
// pipe that sends nothing) is left to return on its own (it cannot be
// interrupted); nothing reads r after that Read.
//
// Three stages: one goroutine reads and parses the lines and checks what
// depends on the lines before (custom_id repeats); GOMAXPROCS goroutines
// validate the jobs (most of a line's CPU); this goroutine takes the
// verdicts in input order, checks job id repeats and reports problems. A
// bounded number of lines is in flight.
func (p *Producer) validateBatch(ctx context.Context, bo batchOptions, r io.Reader) ([]results.BatchEntry, error) {
	workers := runtime.GOMAXPROCS(0)
	order := make(chan chan verdict, 4*workers) // one slot per line, in input order
	type task struct {
		job  *jobs.Job
		line int
		slot chan<- verdict
	}
	tasks := make(chan task)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range tasks {
				v := verdict{line: t.line, explicit: t.job.ID != ""}
				id, err := p.batchJob(bo, t.job)
				if err != nil {
					v.problem = &jobs.LineError{Line: t.line, Err: err}
				}
				v.id = id
				t.slot <- v
			}
		}()
	}
	var (
		tooMany bool
		readErr error
	)
	go func() {
		defer close(order)
		defer func() { close(tasks); wg.Wait() }()
		jr := jobs.NewReader(r)
		seenCustom := map[string]int{}
		requests := 0
		for ctx.Err() == nil {
			job, line, err := jr.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			var le *jobs.LineError
			if err != nil && !errors.As(err, &le) {
				readErr = err
				return
			}
			if requests++; bo.maxJobs > 0 && requests > bo.maxJobs {
				tooMany = true
				return
			}
			slot := make(chan verdict, 1)
			select {
			case order <- slot:
			case <-ctx.Done():
				return
			}
			if le != nil {
				slot <- verdict{line: line, problem: le}
				if errors.Is(le, jobs.ErrLineTooLong) {
					return // the scanner cannot go on past an over-long line
				}
				continue
			}
			if bo.check != nil {
				if err := bo.check(job); err != nil {
					slot <- verdict{line: line, problem: &jobs.LineError{Line: line, Err: err}}
					continue
				}
			}
			fillCustomID(job, line)
			if first, ok := seenCustom[job.CustomID]; ok {
				slot <- verdict{line: line, problem: lineProblem(line, ErrDuplicateCustomID, "custom_id", "%q repeats line %d; custom ids must be unique in a batch", job.CustomID, first)}
				continue
			}
			seenCustom[job.CustomID] = line
			if job.BatchID != "" && job.BatchID != bo.batchID {
				slot <- verdict{line: line, problem: lineProblem(line, nil, "batch_id", "%q differs from the batch being enqueued (%q)", job.BatchID, bo.batchID)}
				continue
			}
			select {
			case tasks <- task{job: job, line: line, slot: slot}:
			case <-ctx.Done():
				return
			}
		}
	}()

	berr := &BatchError{}
	fail := func(le *jobs.LineError) {
		berr.Invalid++
		if len(berr.Lines) < MaxReportedProblems {
			berr.Lines = append(berr.Lines, le)
		}
		if bo.onProblem != nil {
			bo.onProblem(le)
		}
	}
	seenID := map[string]int{}
	var entries []results.BatchEntry
	cancelled := func() error { return fmt.Errorf("validate batch %q: %w", bo.batchID, ctx.Err()) }
	for {
		var slot chan verdict
		select {
		case slot = <-order:
		case <-ctx.Done():
			return nil, cancelled()
		}
		if slot == nil {
			break // order is closed: every line is in
		}
		var v verdict
		select {
		case v = <-slot:
		case <-ctx.Done(): // the reader stopped before the line's verdict
			return nil, cancelled()
		}
		if v.problem != nil {
			fail(v.problem)
			continue
		}
		if first, ok := seenID[v.id]; ok {
			what := "job id"
			if v.explicit {
				what = "id"
			}
			fail(lineProblem(v.line, nil, "id", "%s %q repeats line %d; job ids must be unique in a batch", what, v.id, first))
			continue
		}
		seenID[v.id] = v.line
		entries = append(entries, results.BatchEntry{JobID: v.id, Line: v.line})
	}
	// order is closed: the reader is done and its variables are settled.
	if err := ctx.Err(); err != nil { // the reader stopped early
		return nil, cancelled()
	}
	if readErr != nil {
		return nil, readErr
	}
	if tooMany {
		berr.TooMany = bo.maxJobs
	}
	if berr.Invalid > 0 || berr.TooMany > 0 {
		return nil, berr
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("batch %q: %w: %w", bo.batchID, jobs.ErrInvalid, ErrNoJobs)
	}
	return entries, nil
}

// lineProblem is line's problem at path; mark, when not nil, is a sentinel
// the problem also matches.
func lineProblem(line int, mark error, path, format string, args ...any) *jobs.LineError {
	ve := &jobs.ValidationError{Problems: []jobs.Problem{{Path: path, Message: fmt.Sprintf(format, args...)}}}
	var err error = ve
	if mark != nil {
		err = markedError{ve, mark}
	}
	return &jobs.LineError{Line: line, Err: err}
}

// batchJob completes a batch line's job (batch id, job id) and validates
// it, returning its id.
func (p *Producer) batchJob(bo batchOptions, job *jobs.Job) (string, error) {
	job.BatchID = bo.batchID
	if job.ID == "" {
		job.ID = jobs.JobID(bo.batchID, job.CustomID)
	}
	if _, err := p.prepare(job, bo.job...); err != nil {
		return job.ID, err
	}
	return job.ID, nil
}

// conflicts collects the jobs whose ids belong to other batches.
type conflicts struct {
	mu  sync.Mutex
	all []Conflict
	ConflictError
}

func (c *conflicts) add(x Conflict) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all = append(c.all, x)
	c.Count++
	if len(c.Jobs) < MaxReportedProblems {
		c.Jobs = append(c.Jobs, x)
	}
}

// submitBatch reads the validated input again and submits its jobs in
// parallel, one line in memory per submitter. The reader only parses; each
// submitter builds its job's task (validation and encoding, most of a
// line's CPU) and enqueues it, so the work spreads over the cores.
func (p *Producer) submitBatch(ctx context.Context, bo batchOptions, r io.Reader, rep *BatchReport) (*conflicts, error) {
	cf := &conflicts{ConflictError: ConflictError{BatchID: bo.batchID}}
	var enq, dup, done atomic.Int64
	type lineJob struct {
		job  *jobs.Job
		line int
	}
	work := make(chan lineJob)
	errc := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
		cancel()
	}
	var wg sync.WaitGroup
	for range min(p.o.parallelism, max(1, rep.Jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lj := range work {
				pj, err := p.preparedBatchJob(bo, lj.job)
				if err != nil {
					fail(fmt.Errorf("the batch input changed while it was enqueued: %w", err))
					continue
				}
				pj.line = lj.line
				err = p.submitOwned(ctx, bo.batchID, pj)
				var ce *ConflictError
				switch {
				case errors.As(err, &ce):
					for _, c := range ce.Jobs {
						c.Line = pj.line
						cf.add(c)
					}
				case errors.Is(err, ErrDuplicate):
					dup.Add(1)
				case err != nil:
					fail(err)
					continue
				default:
					enq.Add(1)
				}
				n := done.Add(1)
				if bo.progress != nil && (n%256 == 0 || int(n) == rep.Jobs) {
					bo.progress(int(n), rep.Jobs)
				}
			}
		}()
	}
	lj := &lineJobs{r: jobs.NewReader(r)}
	var readErr error
send:
	for {
		job, line, err := lj.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			readErr = fmt.Errorf("read the batch input again: %w", err)
			break
		}
		select {
		case work <- lineJob{job, line}:
		case <-ctx.Done():
			break send
		}
	}
	close(work)
	wg.Wait()
	rep.Enqueued, rep.Duplicates = int(enq.Load()), int(dup.Load())
	select {
	case err := <-errc:
		return cf, err
	default:
	}
	if readErr != nil {
		return cf, readErr
	}
	if err := ctx.Err(); err != nil {
		return cf, err
	}
	return cf, nil
}

// preparedBatchJob builds the task of a batch line's job.
func (p *Producer) preparedBatchJob(bo batchOptions, job *jobs.Job) (prepared, error) {
	job.BatchID = bo.batchID
	if job.ID == "" {
		job.ID = jobs.JobID(bo.batchID, job.CustomID)
	}
	pj, err := p.prepare(job, bo.job...)
	if err != nil {
		return prepared{}, err
	}
	return pj, nil
}

// rewound is a batch input that can be read twice.
type rewound struct {
	first io.Reader
	again func() (io.Reader, error)
}

// rewindable returns r readable twice: a seekable file is read in place, any
// other input is copied to a temporary file in dir as it is read first.
func rewindable(r io.Reader, dir string) (rewound, func(), error) {
	if s, ok := r.(io.ReadSeeker); ok {
		if start, err := s.Seek(0, io.SeekCurrent); err == nil {
			return rewound{first: s, again: func() (io.Reader, error) {
				if _, err := s.Seek(start, io.SeekStart); err != nil {
					return nil, fmt.Errorf("rewind the batch input: %w", err)
				}
				return s, nil
			}}, func() {}, nil
		}
	}
	f, err := os.CreateTemp(dir, "llmq-batch-*.jsonl")
	if err != nil {
		return rewound{}, nil, fmt.Errorf("spool the batch input: %w", err)
	}
	// Unlinked at once where the OS allows it (the open file stays
	// readable), so no spool file is left behind even by a SIGKILL.
	cleanup := func() { f.Close(); os.Remove(f.Name()) }
	if os.Remove(f.Name()) == nil {
		cleanup = func() { f.Close() }
	}
	return rewound{first: io.TeeReader(r, f), again: func() (io.Reader, error) {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("rewind the spooled batch input: %w", err)
		}
		return f, nil
	}}, cleanup, nil
}
