// Command budget benchmarks llmq's fleet-wide budget (issues 4, 11 and 15):
// how close a fleet of `llmq worker` processes drains a batch to the
// fastest the provider's limits allow, and how often the provider has to
// refuse a call. It runs `make bench-budget` (about ten minutes):
//
//	go run ./bench/budget -bin bin/llmq
//
// Each table is one provider: an in-process fake upstream (fakeupstream)
// enforcing RPM and TPM with golang.org/x/time/rate buckets, charging
// tokens by its tokenizer or by characters (chars/4 per message + 4, +
// max_tokens × n), with per-minute buckets or buckets quantised to 1 s or
// 2 s of rate. Every row drains the table's batch against fresh buckets and
// a fresh slice of the local Redis. Rows:
//
//   - llmq worker: real `llmq worker` subprocesses (bin/llmq), started by
//     the shared fleet harness (llmqtest/fleet), sharing one budget through
//     Redis: llmq's defaults with the provider's RPM/TPM, and its bursts only in the per-minute tables
//     (elsewhere llmq's default burst, as a new user would run it). The
//     "tokenizer estimate" row charges the tokenizer's count instead of
//     llmq's default character estimate, so only calibration from the
//     provider's headers can close the gap.
//   - baseline, split 1/N: what a user of plain asynq would do. N asynq
//     servers, in this process, each with x/time/rate limiters holding 1/N
//     of the RPM, TPM and the provider's buckets, charging the tokenizer's
//     count, calling the same fake with the same upstream client. A 429 is
//     retried after its Retry-After (kinder than asynq's default backoff).
//   - baseline, no split: the same, each server believing it has it all.
//
// A fleet may grow: the growing table starts one process with 2 handlers
// and adds three with 16 after 6 s, the case where a per-process split
// strands budget in idle processes. The llmq workers of a stage start
// together and the harness returns once asynq lists them all.
//
// Drain time runs from the first request's arrival at the upstream to the
// last successful answer, so process start-up and asynq's idle polling are
// not counted in any row. The bound is the fastest any client could drain
// the batch given that both buckets start full:
//
//	bound = max((N - bucket_requests)/RPM, (Σcost - bucket_tokens)/TPM)
//
// where cost is what the fake charges a request on arrival. Utilisation is
// what was charged over what the provider allowed during the drain:
// Σcost/(bucket + TPM × drain).
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
	flag.IntVar(&o.jobs, "jobs", 300, "jobs in the batch of the per-minute and quantised tables")
	flag.IntVar(&o.concurrency, "concurrency", 8, "handlers per worker process of the per-minute tables")
	flag.DurationVar(&o.latency, "latency", 25*time.Millisecond, "fake upstream latency per call")
	flag.DurationVar(&o.maxWait, "max-wait", 5*time.Second, "llmq budget_max_wait")
	flag.DurationVar(&o.transit, "transit", 100*time.Millisecond, "llmq budget_transit (headroom for calls overtaking each other on their way)")
	flag.Uint64Var(&o.seed, "seed", 4, "seed of the batch's mix")
	flag.StringVar(&o.rows, "rows", "", "run only these kinds of rows (llmq, llmq-tokenizer, llmq-chars, split, nosplit), comma-separated; empty: all")
	flag.DurationVar(&o.rowTimeout, "row-timeout", 3*time.Minute, "give up on a row after this long")
	flag.BoolVar(&o.keepWorkerLog, "worker-log", false, "print the llmq workers' logs")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-budget:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	only, err := parseRows(o.rows)
	if err != nil {
		return err
	}
	fmt.Printf("llmq budget_max_wait %s, budget_transit %s; fake upstream latency %s; drain = first arrival to last answer\n",
		o.maxWait, o.transit, o.latency)
	var failed []string
	for _, sc := range scenarios(o) {
		rows := sc.rows
		if only != nil {
			rows = filterRows(rows, only)
		}
		if len(rows) == 0 {
			continue
		}
		b := newBatch(sc.jobs, o.seed, sc.small, sc.method())
		capReq, capTok := sc.capacities()
		bound := boundOf(sc, b)
		fmt.Printf("\n== %s\n", sc.name)
		fmt.Printf("provider: RPM %d, TPM %d, buckets %d requests / %d tokens, %s accounting; fleet %s\n",
			sc.rpm, sc.tpm, capReq, capTok, sc.method(), sc.fleet())
		fmt.Printf("batch: %d jobs, Σcost %d tokens as the provider counts (mean %d, max %d), max_tokens %d–%d; bound %.2fs\n",
			len(b.jobs), b.sumCost, b.sumCost/int64(len(b.jobs)), b.maxCost, b.minMax, b.maxMax, bound.Seconds())
		fmt.Printf("%-44s %-22s %8s %8s %6s %6s %6s %6s %8s %6s\n", "row", "fleet", "drain", "bound", "ratio", "429s", "calls", "429 %", "util tok", "factor")
		for _, r := range rows {
			res, err := r.run(ctx, o, sc, b)
			title := r.title()
			if err != nil {
				fmt.Printf("%-44s %-22s  FAILED: %v\n", title, r.fleet(sc), err)
				failed = append(failed, sc.name+": "+title)
				continue
			}
			factor := "-"
			if res.factor > 0 {
				factor = fmt.Sprintf("%.3f", res.factor)
			}
			fmt.Printf("%-44s %-22s %7.2fs %7.2fs %6.3f %6d %6d %5.1f%% %7.1f%% %6s\n", title, r.fleet(sc),
				res.drain.Seconds(), bound.Seconds(), res.drain.Seconds()/bound.Seconds(), res.throttled, res.calls,
				100*float64(res.throttled)/float64(max(1, res.calls)),
				100*float64(b.sumCost)/(float64(capTok)+float64(sc.tpm)*res.drain.Minutes()), factor)
		}
	}
	fmt.Println("\n429s: refusals by the fake's own RPM/TPM (Stats.Throttled); calls: requests the fake received;")
	fmt.Println("bound = max((N - bucket_requests)/RPM, (Σcost - bucket_tokens)/TPM), buckets start full.")
	if len(failed) > 0 {
		return errors.New("rows failed: " + strings.Join(failed, "; "))
	}
	return nil
}

// reqBound is the fastest the request bucket lets the batch through.
func reqBound(sc *scenario, b *batch) time.Duration {
	capReq, _ := sc.capacities()
	n := max(0, int64(len(b.jobs))-capReq)
	return time.Duration(float64(n) / float64(sc.rpm) * float64(time.Minute))
}

// tokBound is the fastest the token bucket lets the batch through.
func tokBound(sc *scenario, b *batch) time.Duration {
	_, capTok := sc.capacities()
	n := max(0, b.sumCost-capTok)
	return time.Duration(float64(n) / float64(sc.tpm) * float64(time.Minute))
}

func boundOf(sc *scenario, b *batch) time.Duration { return max(reqBound(sc, b), tokBound(sc, b)) }
