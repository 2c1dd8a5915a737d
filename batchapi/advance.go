package batchapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/results"
)

// Error codes of batch errors and of error-file lines llmq writes itself.
const (
	CodeInvalidJSONLine   = "invalid_json_line"
	CodeInvalidRequest    = "invalid_request"
	CodeInvalidURL        = "invalid_url"
	CodeDuplicateCustomID = "duplicate_custom_id"
	CodeMissingCustomID   = "missing_required_parameter"
	CodeLineTooLong       = "line_too_long"
	CodeEmptyFile         = "empty_file"
	CodeTooManyRequests   = "too_many_tasks"
	CodeTooManyErrors     = "too_many_errors"
	CodeFileNotFound      = "file_not_found"
	// CodeBatchExpired marks a request that had not run when the
	// completion window passed (OpenAI's code).
	CodeBatchExpired = "batch_expired"
	// CodeBatchCancelled marks a request that had not run when the batch
	// was cancelled.
	CodeBatchCancelled = "batch_cancelled"
)

// advance moves batch id through its lifecycle as far as it can go now,
// under the batch's lock; when another server holds the lock it returns at
// once (that server is doing the work).
func (s *Service) advance(ctx context.Context, id string) error {
	ctx, unlock, ok, err := s.lock(ctx, id)
	if err != nil || !ok {
		return err
	}
	defer unlock()
	for range 6 {
		rec, err := s.st.batch(ctx, "", id)
		if errors.Is(err, ErrNotFound) {
			return s.cfg.Redis.SRem(ctx, s.st.activeKey(), id).Err()
		}
		if err != nil {
			return err
		}
		changed, err := s.step(ctx, rec)
		if err != nil || !changed {
			return err
		}
	}
	return nil
}

// step makes one transition of rec, saves it and reports whether it
// changed anything.
func (s *Service) step(ctx context.Context, rec *batchRecord) (bool, error) {
	b := &rec.Batch
	now := s.cfg.Now()
	cancelAt, err := s.cancelRequested(ctx, b.ID)
	if err != nil {
		return false, err
	}
	switch b.Status {
	case StatusValidating:
		if cancelAt != nil {
			return true, s.cancelUnstarted(ctx, rec, cancelAt)
		}
		return true, s.start(ctx, rec)
	case StatusInProgress:
		switch {
		case cancelAt != nil:
			b.Status, b.CancellingAt = StatusCancelling, cancelAt
			return true, s.st.saveBatch(ctx, rec)
		case !rec.Expiring && b.ExpiresAt != nil && now.Unix() >= *b.ExpiresAt:
			rec.Expiring = true
			return true, s.st.saveBatch(ctx, rec)
		}
		if rec.Expiring {
			if err := s.removeQueued(ctx, rec); err != nil {
				return false, err
			}
		}
		counts, err := s.counts(ctx, rec)
		if err != nil || counts.Completed+counts.Failed < counts.Total {
			return false, err
		}
		b.Status, b.FinalizingAt = StatusFinalizing, ptr(now.Unix())
		return true, s.st.saveBatch(ctx, rec)
	case StatusCancelling:
		if err := s.removeQueued(ctx, rec); err != nil {
			return false, err
		}
		counts, err := s.counts(ctx, rec)
		if err != nil || counts.Completed+counts.Failed < counts.Total {
			return false, err
		}
		return true, s.finalize(ctx, rec)
	case StatusFinalizing:
		return true, s.finalize(ctx, rec)
	}
	return false, s.cfg.Redis.SRem(ctx, s.st.activeKey(), b.ID).Err()
}

// cancelRequested returns when a cancel was asked for, or nil.
func (s *Service) cancelRequested(ctx context.Context, id string) (*int64, error) {
	v, err := s.cfg.Redis.Get(ctx, s.st.cancelKey(id)).Int64()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read cancel of batch %s: %w", id, err)
	}
	return &v, nil
}

// errCancelRequested is the cause of an enqueue stopped by the batch's
// cancel.
var errCancelRequested = errors.New("batch cancel requested")

// cancelUnstarted ends a batch cancelled before its enqueue finished (the
// cancel stopped it, or came before it began, or the server enqueueing it
// died). With no job registered it is cancelled at once; otherwise the
// jobs registered so far are the batch, and it goes cancelling: the next
// step removes those queued and writes the files of those that ran.
func (s *Service) cancelUnstarted(ctx context.Context, rec *batchRecord, cancelAt *int64) error {
	b := &rec.Batch
	now := s.cfg.Now().Unix()
	st, err := s.results.Batch(ctx, b.ID)
	switch {
	case errors.Is(err, results.ErrNotFound):
		b.Status, b.CancellingAt, b.CancelledAt = StatusCancelled, cancelAt, ptr(now)
		return s.finish(ctx, rec)
	case err != nil:
		return err
	}
	b.Status, b.InProgressAt, b.CancellingAt = StatusCancelling, ptr(now), cancelAt
	b.RequestCounts.Total = st.Total
	return s.st.saveBatch(ctx, rec)
}

// finish saves a batch that reached a final status and drops it from the
// active set.
func (s *Service) finish(ctx context.Context, rec *batchRecord) error {
	if err := s.st.saveBatch(ctx, rec); err != nil {
		return err
	}
	return s.cfg.Redis.SRem(ctx, s.st.activeKey(), rec.Batch.ID).Err()
}

// fail ends a batch as failed with errs.
func (s *Service) fail(ctx context.Context, rec *batchRecord, errs []BatchError) error {
	b := &rec.Batch
	b.Status, b.FailedAt = StatusFailed, ptr(s.cfg.Now().Unix())
	b.Errors = &BatchErrors{Object: "list", Data: errs}
	return s.finish(ctx, rec)
}

// MaxBatchErrors caps the problems a failed batch's errors list: an input
// of any size fails in bounded memory. Past the cap, one more entry
// (CodeTooManyErrors) counts the problems left out.
const MaxBatchErrors = 1000

// errMissingCustomID is the problem of a line without a custom_id.
var errMissingCustomID = errors.New("missing custom_id")

// errJobID is the problem of a line that sets llmq's job id: through the
// API a request's id is always <batch id>:<custom_id>, so one tenant's
// line can never name (or learn of) another tenant's job.
var errJobID = errors.New("id set")

// checkLine is the API's own rule for an input line, on top of llmq's
// validation.
func checkLine(j *jobs.Job) error {
	switch {
	case j.CustomID == "":
		return errMissingCustomID
	case j.ID != "":
		return errJobID
	}
	return nil
}

// start validates the input file and, when every line is valid, enqueues
// its jobs: producer.EnqueueBatch reads the file from Redis twice, a chunk
// at a time (once to validate, once to submit; a stored file never
// changes, so it is Immutable and validated once), so memory is bounded by
// MaxRequests and MaxBatchErrors, whatever the file's size. Any problem
// fails the batch with every problem and its line, and nothing runs.
// Enqueueing is idempotent: a server that dies mid-way leaves a batch the
// next one enqueues again, skipping the jobs already there. A cancel
// stops the validation within cancelCheckRequests requests (nothing is
// registered, so the batch is cancelled at once, unless an earlier start
// that died registered jobs), or the submission within a progress report
// (a few hundred jobs): the jobs registered are the batch, which goes
// cancelling (cancelUnstarted).
func (s *Service) start(ctx context.Context, rec *batchRecord) error {
	b := &rec.Batch
	frec, err := s.st.file(ctx, rec.Tenant, b.InputFileID)
	if errors.Is(err, ErrNotFound) {
		// The file may have been deleted while an earlier start was
		// enqueueing it: the jobs already queued must not run (and be
		// paid for) for a batch that failed.
		if err := s.removeQueued(ctx, rec); err != nil {
			return err
		}
		return s.fail(ctx, rec, []BatchError{{Code: CodeFileNotFound, Message: "The input file " + b.InputFileID + " no longer exists.", Param: ptr("input_file_id")}})
	}
	if err != nil {
		return err
	}
	problems := &problemList{}
	// A cancel stops the validation and the submission: the validation
	// reads the batch's cancel every cancelCheckRequests requests (lines
	// that parse; a file of mostly unparsable lines fails the batch
	// instead), the submission at each progress report (every few hundred
	// jobs).
	ectx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	readCancel := func() {
		if at, err := s.cancelRequested(ectx, b.ID); err == nil && at != nil {
			stop(errCancelRequested)
		}
	}
	requests := 0
	check := func(j *jobs.Job) error { // the validation calls it for each request, in order
		if requests++; requests%cancelCheckRequests == 0 {
			if s.onValidating != nil {
				s.onValidating(requests)
			}
			readCancel()
		}
		return checkLine(j)
	}
	progress := func(done, total int) {
		if s.onProgress != nil {
			s.onProgress(done, total)
		}
		readCancel()
	}
	rep, err := s.prod.EnqueueBatch(ectx, s.st.content(ectx, frec), producer.BatchID(b.ID),
		producer.JobOptions(producer.Queue(rec.Queue)), producer.MaxJobs(s.cfg.MaxRequests), producer.Immutable(),
		producer.CheckLine(check), producer.OnProblem(problems.add), producer.Progress(progress))
	var (
		berr *producer.BatchError
		cerr *producer.ConflictError
	)
	switch {
	case err != nil && errors.Is(context.Cause(ectx), errCancelRequested) && ctx.Err() == nil:
		at, err := s.cancelRequested(ctx, b.ID)
		if err != nil {
			return err
		}
		return s.cancelUnstarted(ctx, rec, at)
	case errors.As(err, &berr):
		if berr.TooMany > 0 {
			problems.errs = append(problems.errs, BatchError{Code: CodeTooManyRequests,
				Message: fmt.Sprintf("The input file holds more than %d requests; a batch may hold at most %d.", berr.TooMany, berr.TooMany), Param: ptr("input_file_id")})
		}
		return s.fail(ctx, rec, problems.list())
	case errors.Is(err, producer.ErrNoJobs):
		return s.fail(ctx, rec, []BatchError{{Code: CodeEmptyFile, Message: "The input file holds no requests.", Param: ptr("input_file_id")}})
	case errors.As(err, &cerr):
		// Unreachable through the API (checkLine refuses explicit ids, and
		// batch ids are new): the jobs left out are not part of the batch.
		s.log.Warn().Err(err).Str("batch_id", b.ID).Msg("batchapi: jobs left out of the batch")
	case err != nil:
		return err
	}
	b.Status, b.InProgressAt = StatusInProgress, ptr(s.cfg.Now().Unix())
	b.RequestCounts.Total = rep.Jobs
	return s.st.saveBatch(ctx, rec)
}

// problemList collects a batch's line problems, at most MaxBatchErrors,
// counting the rest.
type problemList struct {
	errs    []BatchError
	omitted int
}

func (p *problemList) add(le *jobs.LineError) {
	for _, e := range lineErrors(le) {
		if len(p.errs) < MaxBatchErrors {
			p.errs = append(p.errs, e)
		} else {
			p.omitted++
		}
	}
}

// list returns the problems, with one entry counting those left out.
func (p *problemList) list() []BatchError {
	if p.omitted == 0 {
		return p.errs
	}
	return append(p.errs, BatchError{Code: CodeTooManyErrors,
		Message: fmt.Sprintf("%d more problems are not listed: only the first %d are. Fix these and validate the file again.", p.omitted, MaxBatchErrors)})
}

// lineErrors turns one line's problems into batch errors, one per field.
func lineErrors(le *jobs.LineError) []BatchError {
	line := ptr(le.Line)
	switch {
	case errors.Is(le, jobs.ErrLineTooLong):
		return []BatchError{{Code: CodeLineTooLong, Message: le.Err.Error(), Line: line}}
	case errors.Is(le, errMissingCustomID):
		return []BatchError{{Code: CodeMissingCustomID, Message: "Missing required parameter: 'custom_id'.", Param: ptr("custom_id"), Line: line}}
	case errors.Is(le, errJobID):
		return []BatchError{{Code: CodeInvalidRequest, Message: "The field 'id' is not accepted: custom_id names a request.", Param: ptr("id"), Line: line}}
	}
	var ve *jobs.ValidationError
	if !errors.As(le.Err, &ve) {
		return []BatchError{{Code: CodeInvalidRequest, Message: le.Err.Error(), Line: line}}
	}
	out := make([]BatchError, 0, len(ve.Problems))
	for _, p := range ve.Problems {
		e := BatchError{Code: CodeInvalidRequest, Message: p.String(), Line: line}
		switch {
		case errors.Is(le, producer.ErrDuplicateCustomID):
			e.Code, e.Param = CodeDuplicateCustomID, ptr(p.Path)
		case p.Path == "(line)":
			e.Code = CodeInvalidJSONLine
		case p.Path == "url":
			e.Code, e.Param = CodeInvalidURL, ptr(p.Path)
		default:
			e.Param = ptr(p.Path)
		}
		out = append(out, e)
	}
	return out
}

// counts returns a batch's live request counts: succeeded and failed jobs
// from the result store, plus the requests removed by a cancel or expiry.
func (s *Service) counts(ctx context.Context, rec *batchRecord) (RequestCounts, error) {
	c := RequestCounts{Total: rec.Batch.RequestCounts.Total}
	if rec.Batch.Status == StatusValidating || c.Total == 0 {
		return c, nil
	}
	st, err := s.results.Batch(ctx, rec.Batch.ID)
	if err != nil && !errors.Is(err, results.ErrNotFound) {
		return c, err
	}
	removed, err := s.cfg.Redis.HLen(ctx, s.st.removedKey(rec.Batch.ID)).Result()
	if err != nil {
		return c, fmt.Errorf("count removed requests of batch %s: %w", rec.Batch.ID, err)
	}
	c.Completed, c.Failed = st.Succeeded, st.Failed+int(removed)
	return c, nil
}

// removeQueued deletes the batch's jobs that have not run (pending,
// scheduled, waiting for a retry) from its queue and records each as
// removed, with its custom_id (through the API a job id is always
// <batch id>:<custom_id>); jobs in flight are left to finish and store
// their result. A job that finished between the export and the delete has
// its result: it counts as done, not removed. Running it again (after a
// crash) removes and records only what is left. It costs a few round
// trips per producer.RemoveChunk jobs, and per chunk a look through the
// queue's pending list from both ends until the chunk's jobs are found
// (producer.RemoveQueued).
func (s *Service) removeQueued(ctx context.Context, rec *batchRecord) error {
	id := rec.Batch.ID
	removedKey := s.st.removedKey(id)
	removed, err := s.cfg.Redis.HGetAll(ctx, removedKey).Result()
	if err != nil {
		return fmt.Errorf("read removed requests of batch %s: %w", id, err)
	}
	var todo []string
	err = s.results.Export(ctx, id, func(jobID string, r *jobs.Result) error {
		if r == nil && removed[jobID] == "" {
			todo = append(todo, jobID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for start := 0; start < len(todo); start += producer.RemoveChunk {
		chunk := todo[start:min(start+producer.RemoveChunk, len(todo))]
		found, err := s.prod.RemoveQueued(ctx, rec.Queue, chunk)
		if err != nil {
			return fmt.Errorf("batch %s: %w", id, err)
		}
		// The results are read after the delete, in one round trip.
		pipe := s.cfg.Redis.Pipeline()
		reads := make([]func() (*jobs.Result, error), len(chunk))
		for i, jobID := range chunk {
			if found[i] != producer.InFlight { // in flight: it finishes and stores its result
				reads[i] = s.results.GetIn(ctx, pipe, jobID)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("batch %s: read results: %w", id, err)
		}
		var fields []any
		for i, jobID := range chunk {
			if reads[i] == nil {
				continue
			}
			if _, err := reads[i](); err == nil {
				continue // it finished meanwhile: done, not removed
			} else if !errors.Is(err, results.ErrNotFound) {
				return err
			}
			fields = append(fields, jobID, strings.TrimPrefix(jobID, id+jobs.IDSeparator))
		}
		if len(fields) == 0 {
			continue
		}
		pipe = s.cfg.Redis.TxPipeline()
		pipe.HSet(ctx, removedKey, fields...)
		pipe.Expire(ctx, removedKey, s.cfg.FileTTL)
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("record removed requests of batch %s: %w", id, err)
		}
	}
	return nil
}

// finalize writes the output file (successes) and the error file
// (failures, and requests removed by a cancel or expiry) in input order,
// once, and ends the batch: completed, expired or cancelled. File ids
// derive from the batch id, so a server that dies mid-way leaves work the
// next one redoes to the same result.
func (s *Service) finalize(ctx context.Context, rec *batchRecord) error {
	b := &rec.Batch
	removedCode, removedMsg := CodeBatchCancelled, "This request was cancelled before it ran."
	if rec.Expiring {
		removedCode, removedMsg = CodeBatchExpired, "This request could not be executed before the completion window expired."
	}
	removed, err := s.cfg.Redis.HGetAll(ctx, s.st.removedKey(b.ID)).Result()
	if err != nil {
		return fmt.Errorf("read removed requests of batch %s: %w", b.ID, err)
	}
	suffix := strings.TrimPrefix(b.ID, "batch_")
	outID, errID := "file-"+suffix+"-output", "file-"+suffix+"-errors"
	outW := &chunkWriter{ctx: ctx, rdb: s.cfg.Redis, key: s.st.fileDataKey(outID), ttl: uploadTTL}
	errW := &chunkWriter{ctx: ctx, rdb: s.cfg.Redis, key: s.st.fileDataKey(errID), ttl: uploadTTL}
	if err := s.cfg.Redis.Del(ctx, outW.key, errW.key).Err(); err != nil {
		return fmt.Errorf("finalize batch %s: %w", b.ID, err)
	}
	var counts RequestCounts
	err = s.results.Export(ctx, b.ID, func(jobID string, r *jobs.Result) error {
		var line jobs.OutputLine
		w := errW
		switch {
		case r != nil:
			line = r.OutputLine()
			if r.Status == jobs.StatusSucceeded {
				w = outW
				counts.Completed++
			} else {
				counts.Failed++
			}
		case removed[jobID] != "":
			line = jobs.OutputLine{ID: "batch_req_" + jobID, CustomID: removed[jobID], Error: &jobs.OutputError{Code: removedCode, Message: removedMsg}}
			counts.Failed++
		default:
			return nil // unreachable: finalize runs once every job is done or removed
		}
		counts.Total++
		data, err := json.Marshal(line)
		if err != nil {
			return err
		}
		_, err = w.Write(append(data, '\n'))
		return err
	})
	if err == nil {
		err = errors.Join(outW.Close(), errW.Close())
	}
	if err != nil {
		return fmt.Errorf("finalize batch %s: %w", b.ID, err)
	}
	now := s.cfg.Now()
	for _, f := range []struct {
		w    *chunkWriter
		id   string
		name string
		dst  **string
	}{{outW, outID, "_output.jsonl", &b.OutputFileID}, {errW, errID, "_error.jsonl", &b.ErrorFileID}} {
		if f.w.n == 0 {
			continue
		}
		fr := &fileRecord{File: File{ID: f.id, Object: "file", Bytes: f.w.n, CreatedAt: now.Unix(), ExpiresAt: now.Add(s.cfg.FileTTL).Unix(),
			Filename: b.ID + f.name, Purpose: PurposeBatchOutput, Status: "processed"}, Tenant: rec.Tenant, Chunks: f.w.chunks}
		if err := s.st.saveFile(ctx, fr, now); err != nil {
			return err
		}
		*f.dst = ptr(f.id)
	}
	b.RequestCounts = counts
	switch {
	case b.Status == StatusCancelling:
		b.Status, b.CancelledAt = StatusCancelled, ptr(now.Unix())
	case rec.Expiring:
		b.Status, b.ExpiredAt = StatusExpired, ptr(now.Unix())
	default:
		b.Status, b.CompletedAt = StatusCompleted, ptr(now.Unix())
	}
	return s.finish(ctx, rec)
}
