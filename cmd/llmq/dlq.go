package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// asynqArchiveLimit is asynq's bound on archived tasks per queue
// (maxArchiveSize in asynq's internal/rdb; its trim keeps one fewer); it
// also deletes those older than 90 days. llmq's own dead-letter record has
// neither limit.
const asynqArchiveLimit = 10000

// dlqPage is how many dead letters one read fetches.
const dlqPage = 500

func (a *app) dlqCmd() *cobra.Command {
	var queue string
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect and re-run dead-lettered jobs (asynq's archive and llmq's own record, which keeps those asynq drops)",
	}
	cmd.PersistentFlags().StringVar(&queue, "queue", "", "asynq queue (default from config: queue)")
	q := func() string {
		if queue == "" {
			return a.cfg.Queue
		}
		return queue
	}
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead-lettered jobs with their reasons, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := a.openDLQ(cmd.Context(), q())
			if err != nil {
				return err
			}
			defer d.close()
			all, err := d.snapshot()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB ID\tDEAD SINCE\tATTEMPTS\tREASON")
			for i, e := range all {
				if i == limit {
					break
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", e.id, e.at.UTC().Format(time.RFC3339), e.attempts, truncate(e.reason, 160))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			d.summary(a.stderr, all, min(limit, len(all)))
			return nil
		},
	}
	list.Flags().IntVar(&limit, "limit", 100, "list at most this many")
	show := &cobra.Command{
		Use:   "show JOB_ID",
		Short: "Show a dead-lettered job: reason, attempts, payload (prompt truncated), failure record",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.openDLQ(cmd.Context(), q())
			if err != nil {
				return err
			}
			defer d.close()
			out := map[string]any{"id": args[0], "queue": q()}
			var payload []byte
			if t, err := d.insp.GetTaskInfo(q(), args[0]); err == nil {
				out["state"], out["retried"], out["max_retry"] = t.State.String(), t.Retried, t.MaxRetry
				out["last_error"], out["last_failed_at"], payload = t.LastErr, t.LastFailedAt, t.Payload
			} else if dl, derr := d.store.GetDeadLetter(cmd.Context(), q(), args[0]); derr == nil {
				out["state"] = "archived (kept by llmq; asynq dropped it from its archive)"
				out["max_retry"], out["last_error"], out["last_failed_at"], payload = dl.MaxRetry, dl.Reason, dl.At, dl.Payload
			} else {
				return fmt.Errorf("job %q in queue %q: %w", args[0], q(), err)
			}
			if j, err := jobs.Decode(payload); err == nil {
				out["job"] = j.Summary(200)
			} else {
				out["payload_error"] = err.Error()
			}
			if r, err := d.store.Get(cmd.Context(), args[0]); err == nil {
				out["result"] = r
			}
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
	var all bool
	requeue := &cobra.Command{
		Use:   "requeue [JOB_ID...] [--all]",
		Short: "Run dead-lettered jobs again with fresh attempts",
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachDead(cmd.Context(), q(), args, all, "requeued", func(d *dlq, e deadEntry) error {
				// asynq has no atomic "archived -> fresh task": delete,
				// then enqueue the same payload under the same id,
				// retrying the enqueue so a blip of Redis does not drop
				// the job. llmq's record goes last: until the job is
				// queued again it stays findable.
				if e.archived {
					if err := d.insp.DeleteTask(e.queue, e.id); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
						return err
					}
				}
				opts := []asynq.Option{asynq.TaskID(e.id), asynq.Queue(e.queue), asynq.MaxRetry(e.maxRetry),
					asynq.Retention(a.cfg.Results.Retention)}
				if e.timeout > 0 {
					opts = append(opts, asynq.Timeout(e.timeout))
				}
				var err error
				for try := 0; try < 5; try++ {
					_, err = d.client.EnqueueContext(cmd.Context(), asynq.NewTask(e.typ, e.payload), opts...)
					if err == nil || errors.Is(err, asynq.ErrTaskIDConflict) {
						return d.store.RemoveDeadLetters(cmd.Context(), e.queue, e.id)
					}
					time.Sleep(time.Duration(200*(try+1)) * time.Millisecond)
				}
				return fmt.Errorf("not re-enqueued (payload %d bytes; llmq still holds it): %w", len(e.payload), err)
			})
		},
	}
	requeue.Flags().BoolVar(&all, "all", false, "every dead-lettered job of the queue")
	var delAll bool
	del := &cobra.Command{
		Use:   "delete [JOB_ID...] [--all]",
		Short: "Delete dead-lettered jobs (their failed results stay until they expire)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachDead(cmd.Context(), q(), args, delAll, "deleted", func(d *dlq, e deadEntry) error {
				if e.archived {
					if err := d.insp.DeleteTask(e.queue, e.id); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
						return err
					}
				}
				return d.store.RemoveDeadLetters(cmd.Context(), e.queue, e.id)
			})
		},
	}
	del.Flags().BoolVar(&delAll, "all", false, "every dead-lettered job of the queue")
	cmd.AddCommand(list, show, requeue, del)
	return cmd
}

func (a *app) inspector() (*asynq.Inspector, error) {
	opt, err := a.redisOpt()
	if err != nil {
		return nil, err
	}
	return asynq.NewInspector(opt), nil
}

// dlq reads one queue's dead letters from both places they are kept:
// asynq's archive (bounded) and llmq's own record (results.DeadLetter).
type dlq struct {
	ctx    context.Context
	queue  string
	insp   *asynq.Inspector
	client *asynq.Client
	store  *results.Store
	close  func()
}

// deadEntry is one dead letter, wherever it is kept.
type deadEntry struct {
	id, queue, typ, reason string
	payload                []byte
	maxRetry, attempts     int
	timeout                time.Duration
	at                     time.Time
	// archived: asynq's archive holds it; kept: llmq's record does.
	archived, kept bool
}

func (a *app) openDLQ(ctx context.Context, queue string) (*dlq, error) {
	rdb, opt, err := a.redisClient(ctx)
	if err != nil {
		return nil, err
	}
	insp, client := asynq.NewInspector(opt), asynq.NewClient(opt)
	return &dlq{ctx: ctx, queue: queue, insp: insp, client: client, store: results.NewStore(rdb, a.cfg.Prefix, a.cfg.Results.TTL),
		close: func() { insp.Close(); client.Close(); rdb.Close() }}, nil
}

// snapshot returns every dead letter of the queue, newest first: those in
// asynq's archive and those only llmq's record still holds.
func (d *dlq) snapshot() ([]deadEntry, error) {
	byID := map[string]*deadEntry{}
	for page := 1; ; page++ {
		tasks, err := d.insp.ListArchivedTasks(d.queue, asynq.PageSize(dlqPage), asynq.Page(page))
		if err != nil && !errors.Is(err, asynq.ErrQueueNotFound) {
			return nil, fmt.Errorf("list dead letters of queue %q: %w", d.queue, err)
		}
		for _, t := range tasks {
			byID[t.ID] = &deadEntry{id: t.ID, queue: t.Queue, typ: t.Type, payload: t.Payload, maxRetry: t.MaxRetry, timeout: t.Timeout,
				attempts: t.Retried + 1, reason: t.LastErr, at: t.LastFailedAt, archived: true}
		}
		if len(tasks) < dlqPage {
			break
		}
	}
	for off := int64(0); ; off += dlqPage {
		dls, err := d.store.DeadLetters(d.ctx, d.queue, off, dlqPage)
		if err != nil {
			return nil, err
		}
		for _, dl := range dls {
			if e, ok := byID[dl.JobID]; ok {
				e.kept, e.attempts = true, dl.Attempts
				continue
			}
			byID[dl.JobID] = &deadEntry{id: dl.JobID, queue: dl.Queue, typ: dl.Type, payload: dl.Payload, maxRetry: dl.MaxRetry, timeout: dl.Timeout,
				attempts: dl.Attempts, reason: dl.Reason, at: dl.At, kept: true}
		}
		if len(dls) < dlqPage {
			break
		}
	}
	out := make([]deadEntry, 0, len(byID))
	for _, e := range byID {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].at.Equal(out[j].at) {
			return out[i].at.After(out[j].at)
		}
		return out[i].id < out[j].id
	})
	return out, nil
}

// summary says how many dead letters there are and where, and what asynq
// dropped that llmq kept.
func (d *dlq) summary(w io.Writer, all []deadEntry, shown int) {
	var archived, dropped, untracked int
	for _, e := range all {
		switch {
		case !e.archived:
			dropped++
		case !e.kept:
			untracked++
		}
		if e.archived {
			archived++
		}
	}
	fmt.Fprintf(w, "queue %s: %d dead letter(s), %d shown; asynq's archive holds %d", d.queue, len(all), shown, archived)
	if dropped > 0 {
		fmt.Fprintf(w, "; %d more were dropped by asynq (it keeps fewer than %d per queue and none older than 90 days) and are kept by llmq: show and requeue work on them too", dropped, asynqArchiveLimit)
	}
	fmt.Fprintln(w)
	if untracked > 0 && archived >= asynqArchiveLimit {
		fmt.Fprintf(w, "%d archived task(s) are in asynq's archive only (archived by asynq itself or another tool); asynq drops the oldest once %d are archived\n", untracked, asynqArchiveLimit)
	}
}

// eachDead applies fn to the named dead letters, or to all of them (a
// snapshot: jobs dead-lettered again meanwhile are not taken twice).
func (a *app) eachDead(ctx context.Context, queue string, ids []string, all bool, verb string, fn func(*dlq, deadEntry) error) error {
	if len(ids) == 0 && !all {
		return fmt.Errorf("name job ids or pass --all")
	}
	d, err := a.openDLQ(ctx, queue)
	if err != nil {
		return err
	}
	defer d.close()
	var entries []deadEntry
	if all {
		if entries, err = d.snapshot(); err != nil {
			return err
		}
	} else {
		for _, id := range ids {
			e, err := d.find(id)
			if err != nil {
				return err
			}
			entries = append(entries, e)
		}
	}
	for i, e := range entries {
		if err := fn(d, e); err != nil {
			return fmt.Errorf("job %q (%d of %d; %d done): %w", e.id, i+1, len(entries), i, err)
		}
	}
	fmt.Fprintf(a.stdout, "%s %d job(s)\n", verb, len(entries))
	return nil
}

// find returns one dead letter, from asynq's archive or llmq's record.
func (d *dlq) find(id string) (deadEntry, error) {
	t, err := d.insp.GetTaskInfo(d.queue, id)
	if err == nil && t.State != asynq.TaskStateArchived {
		return deadEntry{}, fmt.Errorf("job %q is %s, not dead-lettered", id, t.State)
	}
	if err == nil {
		return deadEntry{id: t.ID, queue: t.Queue, typ: t.Type, payload: t.Payload, maxRetry: t.MaxRetry, timeout: t.Timeout, reason: t.LastErr,
			at: t.LastFailedAt, archived: true}, nil
	}
	dl, derr := d.store.GetDeadLetter(d.ctx, d.queue, id)
	if derr != nil {
		return deadEntry{}, fmt.Errorf("job %q in queue %q: %w", id, d.queue, err)
	}
	return deadEntry{id: dl.JobID, queue: dl.Queue, typ: dl.Type, payload: dl.Payload, maxRetry: dl.MaxRetry, timeout: dl.Timeout, reason: dl.Reason,
		at: dl.At, kept: true}, nil
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
