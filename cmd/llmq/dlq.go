package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/llmq/llmq/jobs"
)

func (a *app) dlqCmd() *cobra.Command {
	var queue string
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect and re-run dead-lettered (archived) jobs",
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
		Short: "List dead-lettered jobs with their reasons",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			insp, err := a.inspector()
			if err != nil {
				return err
			}
			defer insp.Close()
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB ID\tARCHIVED\tRETRIED\tREASON")
			n := 0
			for page := 1; n < limit; page++ {
				tasks, err := insp.ListArchivedTasks(q(), asynq.PageSize(100), asynq.Page(page))
				if err != nil {
					return fmt.Errorf("list dead letters of queue %q: %w", q(), err)
				}
				for _, t := range tasks {
					if n == limit {
						break
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", t.ID, t.LastFailedAt.UTC().Format(time.RFC3339), t.Retried, truncate(t.LastErr, 160))
					n++
				}
				if len(tasks) < 100 {
					break
				}
			}
			return tw.Flush()
		},
	}
	list.Flags().IntVar(&limit, "limit", 100, "list at most this many")
	show := &cobra.Command{
		Use:   "show JOB_ID",
		Short: "Show a dead-lettered job: reason, attempts, payload (prompt truncated)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			insp, err := a.inspector()
			if err != nil {
				return err
			}
			defer insp.Close()
			t, err := insp.GetTaskInfo(q(), args[0])
			if err != nil {
				return fmt.Errorf("job %q in queue %q: %w", args[0], q(), err)
			}
			out := map[string]any{"id": t.ID, "queue": t.Queue, "state": t.State.String(), "retried": t.Retried,
				"max_retry": t.MaxRetry, "last_error": t.LastErr, "last_failed_at": t.LastFailedAt}
			if j, err := jobs.Decode(t.Payload); err == nil {
				out["job"] = j.Summary(200)
			} else {
				out["payload_error"] = err.Error()
			}
			if len(t.Result) > 0 && json.Valid(t.Result) {
				out["result"] = json.RawMessage(t.Result)
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
			return a.eachArchived(q(), args, all, func(insp *asynq.Inspector, client *asynq.Client, t *asynq.TaskInfo) error {
				// asynq has no atomic "archived -> fresh task": delete, then
				// enqueue the same payload under the same id, retrying the
				// enqueue so a blip of Redis does not drop the job.
				if err := insp.DeleteTask(t.Queue, t.ID); err != nil {
					return err
				}
				var err error
				for try := 0; try < 5; try++ {
					_, err = client.EnqueueContext(cmd.Context(), asynq.NewTask(t.Type, t.Payload), asynq.TaskID(t.ID),
						asynq.Queue(t.Queue), asynq.MaxRetry(t.MaxRetry), asynq.Timeout(t.Timeout), asynq.Retention(a.cfg.Results.Retention))
					if err == nil || errors.Is(err, asynq.ErrTaskIDConflict) {
						return nil
					}
					time.Sleep(time.Duration(200*(try+1)) * time.Millisecond)
				}
				return fmt.Errorf("deleted from the archive but not re-enqueued (payload %d bytes): %w", len(t.Payload), err)
			}, "requeued")
		},
	}
	requeue.Flags().BoolVar(&all, "all", false, "every dead-lettered job of the queue")
	var delAll bool
	del := &cobra.Command{
		Use:   "delete [JOB_ID...] [--all]",
		Short: "Delete dead-lettered jobs (their failed results stay until they expire)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachArchived(q(), args, delAll, func(insp *asynq.Inspector, _ *asynq.Client, t *asynq.TaskInfo) error {
				return insp.DeleteTask(t.Queue, t.ID)
			}, "deleted")
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

// eachArchived applies fn to the named archived tasks, or to all of them.
func (a *app) eachArchived(queue string, ids []string, all bool, fn func(*asynq.Inspector, *asynq.Client, *asynq.TaskInfo) error, verb string) error {
	if len(ids) == 0 && !all {
		return fmt.Errorf("name job ids or pass --all")
	}
	opt, err := a.redisOpt()
	if err != nil {
		return err
	}
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	client := asynq.NewClient(opt)
	defer client.Close()
	var tasks []*asynq.TaskInfo
	if all {
		// Snapshot the archive first: jobs that workers dead-letter again
		// while this runs are not taken a second time.
		for page := 1; ; page++ {
			batch, err := insp.ListArchivedTasks(queue, asynq.PageSize(500), asynq.Page(page))
			if err != nil {
				return fmt.Errorf("list dead letters of queue %q: %w", queue, err)
			}
			tasks = append(tasks, batch...)
			if len(batch) < 500 {
				break
			}
		}
	} else {
		for _, id := range ids {
			t, err := insp.GetTaskInfo(queue, id)
			if err != nil {
				return fmt.Errorf("job %q in queue %q: %w", id, queue, err)
			}
			if t.State != asynq.TaskStateArchived {
				return fmt.Errorf("job %q is %s, not dead-lettered", id, t.State)
			}
			tasks = append(tasks, t)
		}
	}
	for i, t := range tasks {
		if err := fn(insp, client, t); err != nil {
			return fmt.Errorf("job %q (%d of %d; %d done): %w", t.ID, i+1, len(tasks), i, err)
		}
	}
	fmt.Fprintf(a.stdout, "%s %d job(s)\n", verb, len(tasks))
	return nil
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
