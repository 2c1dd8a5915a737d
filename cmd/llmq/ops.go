package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/ratelimit"
)

func (a *app) resumeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resume",
		Short: "Lift the fleet's hold (after fixing the API key or quota): upstream calls resume",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rdb, _, err := a.redisClient(cmd.Context())
			if err != nil {
				return err
			}
			defer rdb.Close()
			holds := hold.NewStore(rdb, a.cfg.Prefix)
			st, err := holds.Get(cmd.Context(), a.cfg.Upstream.Account)
			if err != nil {
				return err
			}
			if st == nil {
				fmt.Fprintf(a.stdout, "account %q is not on hold\n", a.cfg.Upstream.Account)
				return nil
			}
			if _, err := holds.Clear(cmd.Context(), a.cfg.Upstream.Account); err != nil {
				return err
			}
			a.log.Warn().Str("event", "resume").Str("account", st.Account).Str("class", st.Class).Msg("hold lifted by operator")
			fmt.Fprintf(a.stdout, "account %q resumed (it was on hold since %s: %s)\n", st.Account, st.Since.UTC().Format(time.RFC3339), st.Reason)
			return nil
		},
	}
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show queues, holds, budgets and circuit breakers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rdb, opt, err := a.redisClient(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			insp := asynq.NewInspector(opt)
			defer insp.Close()
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "QUEUE\tPENDING\tACTIVE\tSCHEDULED\tRETRY\tARCHIVED\tCOMPLETED\tPAUSED")
			queues := []string{}
			for q := range a.cfg.Worker.Queues {
				queues = append(queues, q)
			}
			sort.Strings(queues)
			for _, q := range queues {
				qi, err := insp.GetQueueInfo(q)
				if err != nil {
					fmt.Fprintf(tw, "%s\t(empty)\t\t\t\t\t\t\n", q)
					continue
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%v\n", q, qi.Pending, qi.Active, qi.Scheduled, qi.Retry, qi.Archived, qi.Completed, qi.Paused)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			st, err := hold.NewStore(rdb, a.cfg.Prefix).Get(ctx, a.cfg.Upstream.Account)
			if err != nil {
				return err
			}
			if st != nil {
				fmt.Fprintf(a.stdout, "\nHOLD: account %q on hold since %s (%s): %s\n  fix the key or quota; calls resume when the key changes or after `llmq resume`\n",
					st.Account, st.Since.UTC().Format(time.RFC3339), st.Class, st.Reason)
			} else {
				fmt.Fprintf(a.stdout, "\nhold: none (account %q)\n", a.cfg.Upstream.Account)
			}
			if err := a.printBudgets(ctx, rdb); err != nil {
				return err
			}
			return a.printBreakers(ctx, rdb)
		},
	}
}

// printBudgets shows the budgets in use: one row per model that has
// called upstream recently, with the budget that applies to it (its own or
// the default) and the bucket's state.
func (a *app) printBudgets(ctx context.Context, rdb redis.UniversalClient) error {
	lim, err := a.limiter(rdb)
	if err != nil {
		return err
	}
	models, err := lim.InUse(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	if len(models) == 0 {
		fmt.Fprintf(a.stdout, "budgets: none in use (account %q; no model called recently)\n", a.cfg.Upstream.Account)
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET\tAPPLIES\tRPM\tTPM\tREQUESTS\tTOKENS\tFACTOR\tCOOLDOWN")
	for _, model := range models {
		b, _ := lim.Budget(model)
		applies := model
		if _, own := a.cfg.Budgets[model]; !own {
			applies = ratelimit.DefaultModel
		}
		snap, err := lim.Usage(ctx, model)
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%v\t\t\t\n", model, applies, b.RPM, b.TPM, budgetHint(err))
			continue
		}
		cool := "-"
		if !snap.CooldownUntil.IsZero() {
			cool = "until " + snap.CooldownUntil.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%s\n", model, applies, limit(b.RPM), limit(b.TPM),
			level(snap.Requests, snap.RequestCapacity), level(snap.Tokens, snap.TokenCapacity), snap.Factor, cool)
	}
	return tw.Flush()
}

func limit(n int64) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

func level(avail float64, capacity int64) string {
	if capacity == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f/%d", avail, capacity)
}

func (a *app) fakeUpstreamCmd() *cobra.Command {
	var (
		addr, faults, apiKey string
		accounting           string
		rpm, tpm             int64
		latency, quantum     time.Duration
		generation           time.Duration
		tokensPerSecond      float64
		think                time.Duration
	)
	cmd := &cobra.Command{
		Use:         "fake-upstream",
		Annotations: noRedis(),
		Short:       "Serve a fake OpenAI chat-completions API (limits, headers, fault injection) for tests, demos and drills",
		Args:        cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := fakeupstream.New(fakeupstream.Config{RPM: rpm, TPM: tpm, Latency: latency, Faults: faults, APIKey: apiKey,
				Quantum: quantum, Accounting: fakeupstream.Accounting(accounting),
				GenerationTime: generation, ThinkTime: think, TokensPerSecond: tokensPerSecond})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("fake-upstream: listen on %s: %w", addr, err)
			}
			hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
			a.log.Info().Str("addr", ln.Addr().String()).Int64("rpm", rpm).Int64("tpm", tpm).Dur("latency", latency).Str("faults", faults).
				Msg("fake upstream serving: base URL http://" + ln.Addr().String() + "/v1")
			errc := make(chan error, 1)
			go func() { errc <- hs.Serve(ln) }()
			select {
			case err := <-errc:
				return err
			case <-cmd.Context().Done():
			}
			srv.Close() // release requests held by the hang fault
			hs.Close()
			if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8089", "listen address")
	cmd.Flags().Int64Var(&rpm, "rpm", 0, "requests per minute enforced (0 = unlimited)")
	cmd.Flags().Int64Var(&tpm, "tpm", 0, "tokens per minute enforced (0 = unlimited)")
	cmd.Flags().DurationVar(&latency, "latency", 0, "added latency per request")
	cmd.Flags().DurationVar(&generation, "generation-time", 0, "time every answer takes to generate (streamed: spread over the stream; plain: before the headers)")
	cmd.Flags().DurationVar(&think, "think-time", 0, "time every answer's model reasons before its first token (streamed: headers at once, then silence; plain: before the headers)")
	cmd.Flags().Float64Var(&tokensPerSecond, "tokens-per-second", 0, "generation speed when --generation-time is 0 (0 = instant)")
	cmd.Flags().DurationVar(&quantum, "quantum", 0, "enforce the limits per this much of their rate, e.g. 1s: 60,000 RPM as 1,000 requests a second (0 = per minute)")
	cmd.Flags().StringVar(&accounting, "accounting", string(fakeupstream.AccountTokenizer), "how TPM is charged: tokenizer, or chars (characters/4 per message + 4, + max_tokens × n)")
	cmd.Flags().StringVar(&faults, "faults", "", "fault spec, e.g. \"503,503,200\" or \"random:500=5%,reset=2%\"")
	cmd.Flags().StringVar(&apiKey, "api-key", "", "accept only this API key (default: any non-empty key)")
	return cmd
}

// budgetHint adds to a budget error the configuration that cures it: the
// ratelimit package names the model, the command names the settings.
func budgetHint(err error) error {
	var nb *ratelimit.NoBudgetError
	if errors.As(err, &nb) {
		return fmt.Errorf("%w: add budgets.%s (or budgets.default: {} for unlimited)", err, nb.Model)
	}
	return err
}
