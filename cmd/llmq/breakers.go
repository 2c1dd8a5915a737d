package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/breaker"
)

// printBreakers writes the state of every model's circuit breaker that has
// state in Redis (a model that has not failed recently has none: closed).
func (a *app) printBreakers(ctx context.Context, rdb redis.UniversalClient) error {
	b, err := breaker.New(rdb, breaker.Config{Prefix: a.cfg.Prefix, Scope: a.cfg.Upstream.Account, Failures: a.cfg.Breaker.Failures,
		Window: a.cfg.Breaker.Window, Open: a.cfg.Breaker.Open, PerProcess: a.cfg.Breaker.PerProcess})
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
	fmt.Fprintf(tw, "BREAKER\tSTATE\tFAILURES/%s\tOPEN UNTIL\tPROBE\tTRIPS\n", a.cfg.Breaker.Window)
	for _, st := range list {
		failures, until, probe := "-", "-", "-"
		if st.State == breaker.Closed {
			failures = fmt.Sprintf("%d of %d", st.Failures, a.cfg.Breaker.Failures)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", name, st.State, failures, until, probe, st.Trips)
	}
	return tw.Flush()
}
