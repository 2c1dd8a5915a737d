package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/ratelimit"
	"github.com/llmq/llmq/results"
)

// Exit codes of `llmq enqueue --wait`.
const (
	exitJobsFailed = 4
)

func (a *app) enqueueCmd() *cobra.Command {
	var (
		batchID, queue string
		wait           bool
		attempts       int
	)
	cmd := &cobra.Command{
		Use:   "enqueue FILE.jsonl",
		Short: "Validate and enqueue a JSONL batch (\"-\" reads stdin); prints the batch id",
		Long: `Reads OpenAI Batch input lines ({"custom_id","method","url","body"}) or the short
form ({"custom_id","model","messages",...}), validates every line, and enqueues the
batch only if all are valid. Re-running with the same --batch is a no-op for jobs
already enqueued. With --wait, follows the batch and exits 0 only when every job
succeeded (4 when some were dead-lettered).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			in, closeIn, err := openInput(args[0])
			if err != nil {
				return err
			}
			defer closeIn()
			opt, err := a.redisOpt()
			if err != nil {
				return err
			}
			if queue == "" {
				queue = a.cfg.Queue
			}
			// The configuration's options, the call timeout and fallback
			// tiers among them: each job's task timeout is derived from them.
			p, err := producer.New(opt, append(a.cfg.ProducerOptions(), producer.WithQueue(queue))...)
			if err != nil {
				return err
			}
			defer p.Close()
			bopts := []producer.BatchOption{}
			if batchID != "" {
				bopts = append(bopts, producer.BatchID(batchID))
			}
			if attempts > 0 {
				bopts = append(bopts, producer.JobOptions(producer.MaxAttempts(attempts)))
			}
			var bar *progressbar.ProgressBar
			if a.isTerminal() {
				bopts = append(bopts, producer.Progress(func(done, total int) {
					if bar == nil {
						bar = newBar(a.stderr, total, "enqueue")
					}
					_ = bar.Set(done)
				}))
			}
			start := time.Now()
			rep, err := p.EnqueueBatch(ctx, in, bopts...)
			if bar != nil {
				_ = bar.Finish()
			}
			if err != nil {
				return enqueueError(a, args[0], rep, err)
			}
			fmt.Fprintln(a.stdout, rep.BatchID)
			el := time.Since(start)
			fmt.Fprintf(a.stderr, "batch %s: %d jobs, %d enqueued, %d already enqueued, in %s (%.0f jobs/s)\n",
				rep.BatchID, rep.Jobs, rep.Enqueued, rep.Duplicates, el.Round(time.Millisecond), float64(rep.Jobs)/el.Seconds())
			if !wait {
				return nil
			}
			return a.waitBatch(cmd, p, rep.BatchID)
		},
	}
	cmd.Flags().StringVar(&batchID, "batch", "", "batch id (default: a new random id), letters, digits, '-', '_', '.'; job ids are <batch>:<custom_id>")
	cmd.Flags().StringVar(&queue, "queue", "", "asynq queue (default from config: queue)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until every job has a result; exit 0 only if all succeeded")
	cmd.Flags().IntVar(&attempts, "attempts", 0, "attempts per job (default from config: retry.attempts)")
	return cmd
}

// enqueueError explains a failed enqueue: after the batch was registered
// it prints the batch id on stdout and says how to finish the batch.
func enqueueError(a *app, file string, rep *producer.BatchReport, err error) error {
	var inc *producer.IncompleteError
	if errors.As(err, &inc) {
		fmt.Fprintln(a.stdout, inc.BatchID)
		if file == "-" {
			file = "FILE"
		}
		return fmt.Errorf("%w\nfinish it with the same input and batch id: llmq enqueue %s --batch %s (jobs already enqueued are skipped; a new batch id would run them twice)", err, file, inc.BatchID)
	}
	if errors.Is(err, producer.ErrConflict) && rep != nil {
		fmt.Fprintln(a.stdout, rep.BatchID)
		return fmt.Errorf("%w\ngive those lines other ids (or drop \"id\" to get <batch>:<custom_id>); the rest of the batch was enqueued", err)
	}
	return err
}

func openInput(name string) (io.Reader, func(), error) {
	if name == "-" {
		return os.Stdin, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, fmt.Errorf("open batch input: %w", err)
	}
	return f, func() { f.Close() }, nil
}

func (a *app) isTerminal() bool {
	f, ok := a.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newBar(w io.Writer, total int, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("jobs"),
		progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
}

// waitBatch follows a batch until every job has a result, showing progress
// on a terminal and a line every 10 s otherwise.
func (a *app) waitBatch(cmd *cobra.Command, p *producer.Producer, batchID string) error {
	ctx := cmd.Context()
	start := time.Now()
	var bar *progressbar.ProgressBar
	lastLine := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := p.Batch(ctx, batchID)
		if err != nil && !errors.Is(err, results.ErrNotFound) {
			return err
		}
		if a.isTerminal() {
			if bar == nil && st.Total > 0 {
				bar = newBar(a.stderr, st.Total, "results")
			}
			if bar != nil {
				_ = bar.Set(st.Succeeded + st.Failed)
			}
		} else if time.Since(lastLine) >= 10*time.Second {
			fmt.Fprintf(a.stderr, "batch %s: %d/%d done, %d failed\n", batchID, st.Succeeded+st.Failed, st.Total, st.Failed)
			lastLine = time.Now()
		}
		if st.Done() {
			if bar != nil {
				_ = bar.Finish()
			}
			fmt.Fprintf(a.stderr, "batch %s: %d succeeded, %d failed of %d in %s\n", batchID, st.Succeeded, st.Failed, st.Total, time.Since(start).Round(time.Millisecond))
			if st.Failed > 0 {
				return &exitError{code: exitJobsFailed, msg: fmt.Sprintf("%d of %d jobs failed (dead-lettered); see `llmq results --batch %s --errors errors.jsonl` and `llmq dlq list`", st.Failed, st.Total, batchID)}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting for batch %s (%d/%d done): %w", batchID, st.Succeeded+st.Failed, st.Total, ctx.Err())
		case <-tick.C:
		}
	}
}

// limiter builds the fleet-wide budget from the configuration. It is built
// even when every budget is unlimited: it also carries the fleet-wide 429
// cooldown, which every process must honour.
func (a *app) limiter(rdb redis.UniversalClient) (*ratelimit.Limiter, error) {
	budgets := map[string]ratelimit.Budget{}
	for model, b := range a.cfg.Budgets {
		budgets[model] = ratelimit.Budget{RPM: b.RPM, TPM: b.TPM, BurstTokens: b.Burst, BurstRequests: b.BurstRequests}
	}
	return ratelimit.New(rdb, ratelimit.Config{Prefix: a.cfg.Prefix, Account: a.cfg.Upstream.Account, Budgets: budgets,
		MaxWait: a.cfg.BudgetMaxWait, RefundUnused: a.cfg.BudgetRefundUnused, Transit: a.cfg.BudgetTransit,
		OnProviderLimit: func(p ratelimit.ProviderLimit) {
			a.log.Warn().Str("model", p.Model).Str("kind", p.Kind).Int64("configured", p.Configured).Int64("provider", p.Provider).
				Msg("the provider's x-ratelimit-limit-" + p.Kind + " is below the configured budget: the fleet uses the provider's; lower budgets." + p.Model + " (or LLMQ_RPM/LLMQ_TPM) to match")
		}})
}
