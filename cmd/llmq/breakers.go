package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/config"
)

// breakerConfig is the breaker configuration of the settings.
func breakerConfig(c config.Breaker) breaker.Config {
	return breaker.Config{Failures: c.Failures, FailureRate: c.FailureRate, MinCalls: c.MinCalls, Window: c.Window, Open: c.Open,
		PerProcess: c.PerProcess}
}

// printBreakers writes the state of every model's circuit breaker that has
// state in Redis (a model that has not failed recently has none: closed).
func (a *app) printBreakers(ctx context.Context, rdb redis.UniversalClient) error {
	bc := breakerConfig(a.cfg.Breaker)
	bc.Prefix, bc.Scope = a.cfg.Prefix, a.cfg.Upstream.Account
	b, err := breaker.New(rdb, bc)
	if err != nil {
		return err
	}
	list, err := b.List(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	if len(list) == 0 {
		fmt.Fprintf(a.stdout, "breakers: all closed (no model of account %q failed recently)\n", a.cfg.Upstream.Account)
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "BREAKER\tSTATE\tIN A ROW\tFAILED/CALLS %s\tOPEN UNTIL\tPROBE\tTRIPS\tLAST OPENED BY\n", a.cfg.Breaker.Window)
	for _, st := range list {
		streak, rate, until, probe, reason := "-", "-", "-", "-", "-"
		if st.State == breaker.Closed {
			streak = fmt.Sprintf("%d of %d", st.Streak, a.cfg.Breaker.Failures)
			rate = fmt.Sprintf("%d/%d (opens at %d%% of >= %d)", st.Failures, st.Calls, a.cfg.Breaker.FailureRate, a.cfg.Breaker.MinCalls)
		}
		if st.Reason != "" {
			reason = st.Reason
		}
		if st.State == breaker.Open {
			until = fmt.Sprintf("%s (in %s)", st.OpenUntil.UTC().Format(time.RFC3339), st.OpenUntil.Sub(st.At).Round(time.Second))
		}
		if st.State == breaker.HalfOpen {
			probe = "waiting for a job to probe"
			if !st.ProbeUntil.IsZero() {
				probe = "in flight (lease until " + st.ProbeUntil.UTC().Format(time.RFC3339) + ")"
			}
		}
		name := st.Model
		if a.cfg.Breaker.PerProcess {
			name = st.Scope + "/" + st.Model
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", name, st.State, streak, rate, until, probe, st.Trips, reason)
	}
	return tw.Flush()
}
