// Command budget benchmarks llmq's fleet-wide budget (issue 4): how close a
// fleet of `llmq worker` processes drains a batch to the fastest the
// provider's RPM/TPM allow, and whether the provider ever has to refuse a
// call. It runs `make bench-budget`:
//
//	go run ./bench/budget -bin bin/llmq
//
// Each row drains the same batch (mixed prompt sizes and max_tokens) through
// an in-process fake upstream (fakeupstream) that enforces RPM and TPM
// exactly as configured, with fresh buckets, against a fresh slice of the
// local Redis. Rows:
//
//   - llmq ×1, llmq ×4: real `llmq worker` subprocesses (bin/llmq) sharing
//     one budget through Redis, configured by a YAML file (LLMQ_CONFIG).
//   - split ×4 (baseline): what a user of plain asynq would do. Four asynq
//     servers, in this process, each with golang.org/x/time/rate limiters
//     holding a quarter of the RPM, TPM and bursts, calling the same fake
//     with the same upstream client. A 429 is retried after its
//     Retry-After (kinder than asynq's default backoff).
//   - no split ×4 (baseline): the same, but each server believes it has the
//     whole budget.
//
// Drain time runs from the first request's arrival at the upstream to the
// last successful answer, so process start-up and asynq's idle polling are
// not counted in any row. The bound is the fastest any client could drain
// the batch given that both buckets start full:
//
//	bound = max((N - burst_requests)/RPM, (Σcost - burst_tokens)/TPM)
//
// where cost is what the fake charges a request on arrival (prompt estimate
// + max_tokens × n). Utilisation is what was charged over what the budget
// allowed during the drain: Σ/(burst + rate × drain), for tokens and for
// requests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// options are the benchmark's flags.
type options struct {
	bin           string
	redisAddr     string
	rpm, tpm      int64
	burstReq      int64
	burstTok      int64
	jobs          int
	concurrency   int
	latency       time.Duration
	maxWait       time.Duration
	transit       time.Duration
	seed          uint64
	rows          string
	rowTimeout    time.Duration
	keepWorkerLog bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/llmq", "the llmq binary the worker rows run (make build)")
	flag.StringVar(&o.redisAddr, "redis", "127.0.0.1:6379", "Redis address")
	flag.Int64Var(&o.rpm, "rpm", 6000, "requests per minute, enforced by the fake and budgeted by the workers")
	flag.Int64Var(&o.tpm, "tpm", 1_200_000, "tokens per minute, enforced by the fake and budgeted by the workers")
	flag.Int64Var(&o.burstReq, "burst-requests", 20, "request bucket capacity")
	flag.Int64Var(&o.burstTok, "burst-tokens", 10_000, "token bucket capacity (a quarter must hold the largest job for the split baseline)")
	flag.IntVar(&o.jobs, "jobs", 300, "jobs in the batch")
	flag.IntVar(&o.concurrency, "concurrency", 8, "handlers per worker process")
	flag.DurationVar(&o.latency, "latency", 25*time.Millisecond, "fake upstream latency per call")
	flag.DurationVar(&o.maxWait, "max-wait", 5*time.Second, "llmq budget_max_wait")
	flag.DurationVar(&o.transit, "transit", 100*time.Millisecond, "llmq budget_transit (headroom for calls overtaking each other on their way)")
	flag.Uint64Var(&o.seed, "seed", 4, "seed of the batch's mix")
	flag.StringVar(&o.rows, "rows", "llmq1,llmq4,split4,nosplit4", "rows to run, in order: llmqN, splitN, nosplitN")
	flag.DurationVar(&o.rowTimeout, "row-timeout", 90*time.Second, "give up on a row after this long")
	flag.BoolVar(&o.keepWorkerLog, "worker-log", false, "print the llmq workers' logs")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-budget:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	rows, err := parseRows(o.rows)
	if err != nil {
		return err
	}
	b := newBatch(o.jobs, o.seed)
	if max4 := o.burstTok / 4; b.maxCost > max4 {
		return fmt.Errorf("the largest job costs %d tokens, more than a quarter of -burst-tokens (%d): the split baseline could never run it; raise -burst-tokens", b.maxCost, o.burstTok)
	}
	bound := boundOf(o, b)
	fmt.Printf("budget: RPM %d, TPM %d, bursts %d requests / %d tokens; fake upstream latency %s; llmq budget_max_wait %s, budget_transit %s\n",
		o.rpm, o.tpm, o.burstReq, o.burstTok, o.latency, o.maxWait, o.transit)
	fmt.Printf("batch: %d jobs, Σcost %d tokens (mean %d, max %d), prompts %d–%d tokens, max_tokens %d–%d\n",
		len(b.jobs), b.sumCost, b.sumCost/int64(len(b.jobs)), b.maxCost, b.minPrompt, b.maxPrompt, b.minMax, b.maxMax)
	fmt.Printf("bound = max((N - burst_requests)/RPM, (Σcost - burst_tokens)/TPM) = max(%.2fs, %.2fs) = %.2fs (buckets start full)\n\n",
		reqBound(o, b).Seconds(), tokBound(o, b).Seconds(), bound.Seconds())
	fmt.Printf("%-34s %5s %8s %8s %6s %6s %6s %8s %8s\n", "row", "procs", "drain", "bound", "ratio", "429s", "calls", "util tok", "util req")
	var failed []string
	for _, r := range rows {
		res, err := r.run(ctx, o, b)
		if err != nil {
			fmt.Printf("%-34s %5d  FAILED: %v\n", r.title(), r.procs, err)
			failed = append(failed, r.title())
			continue
		}
		fmt.Printf("%-34s %5d %7.2fs %7.2fs %6.3f %6d %6d %7.1f%% %7.1f%%\n", r.title(), r.procs,
			res.drain.Seconds(), bound.Seconds(), res.drain.Seconds()/bound.Seconds(), res.throttled, res.calls,
			100*float64(b.sumCost)/(float64(o.burstTok)+float64(o.tpm)*res.drain.Minutes()),
			100*float64(len(b.jobs))/(float64(o.burstReq)+float64(o.rpm)*res.drain.Minutes()))
	}
	fmt.Println("\n429s: refusals by the fake's own RPM/TPM (Stats.Throttled); calls: requests the fake received.")
	if len(failed) > 0 {
		return errors.New("rows failed: " + strings.Join(failed, ", "))
	}
	return nil
}

// reqBound is the fastest the request bucket lets the batch through.
func reqBound(o options, b *batch) time.Duration {
	if o.rpm == 0 {
		return 0
	}
	n := max(0, int64(len(b.jobs))-o.burstReq)
	return time.Duration(float64(n) / float64(o.rpm) * float64(time.Minute))
}

// tokBound is the fastest the token bucket lets the batch through.
func tokBound(o options, b *batch) time.Duration {
	if o.tpm == 0 {
		return 0
	}
	n := max(0, b.sumCost-o.burstTok)
	return time.Duration(float64(n) / float64(o.tpm) * float64(time.Minute))
}

func boundOf(o options, b *batch) time.Duration { return max(reqBound(o, b), tokBound(o, b)) }
