package drill

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// Load is drill 6: a large batch enqueued with `llmq enqueue` and drained
// by four worker processes against an instant fake upstream under a lax
// fleet budget (so the budget's Lua runs for every job). It reports the
// enqueue rate, Redis memory per queued job (INFO used_memory before and
// after the enqueue), the drain rate and the workers' peak RSS (VmHWM).
func Load(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "6 load", Size: o.Size}
	n := o.Size.pick(2000, 100_000)
	e, err := newEnv(ctx, o, setup{name: "load", fake: fakeupstream.Config{}, concurrency: 16,
		rpm: 100_000_000, tpm: 100_000_000_000})
	if err != nil {
		return rep, err
	}
	defer e.close()
	input := filepath.Join(e.dir, "batch.jsonl")
	if err := os.WriteFile(input, batchJSONL(n), 0o600); err != nil {
		return rep, fmt.Errorf("write batch: %w", err)
	}
	mem0, err := usedMemory(ctx, e.rdb)
	if err != nil {
		return rep, err
	}
	const batch = "load"
	start := time.Now()
	if _, _, err := e.cli(ctx, nil, "enqueue", input, "--batch", batch); err != nil {
		return rep, err
	}
	enq := time.Since(start)
	mem1, err := usedMemory(ctx, e.rdb)
	if err != nil {
		return rep, err
	}
	rep.note("enqueue (llmq enqueue, one process): %d jobs in %.1f s = %.0f jobs/s", n, enq.Seconds(), float64(n)/enq.Seconds())
	rep.note("Redis memory per queued job: %.0f bytes (used_memory %+.1f MiB for %d jobs)",
		float64(mem1-mem0)/float64(n), float64(mem1-mem0)/(1<<20), n)
	start = time.Now()
	ws := make([]*fleet.Worker, 4)
	for i := range ws {
		if ws[i], err = e.startWorker(ctx); err != nil {
			return rep, err
		}
	}
	left, _, err := e.waitDrained(ctx, time.Duration(o.Size.pick(60, 900))*time.Second)
	if err != nil {
		return rep, err
	}
	drain := time.Since(start)
	var peak, sum int64
	for _, w := range ws {
		kb, err := w.PeakRSS()
		if err != nil {
			rep.fail("%v", err)
			continue
		}
		peak, sum = max(peak, kb), sum+kb
	}
	t, err := e.count(ctx, batch, n)
	if err != nil {
		return rep, err
	}
	t.apply(rep, left)
	rep.note("drain: %d jobs by 4 workers × 16 in %.1f s = %.0f jobs/s (instant upstream, lax budget)", n, drain.Seconds(), float64(n)/drain.Seconds())
	rep.note("worker peak RSS (VmHWM): max %.1f MiB, mean %.1f MiB", float64(peak)/1024, float64(sum)/4/1024)
	mem2, err := usedMemory(ctx, e.rdb)
	if err == nil {
		rep.note("Redis after the drain: %.0f bytes per job (results, completed tasks kept 1 h for asynqmon, batch index)", float64(mem2-mem0)/float64(n))
	}
	calls := e.calls.requests()
	rep.check(calls == n, "upstream saw %d requests for %d jobs", calls, n)
	rep.check(t.succeeded == n, "%d of %d jobs succeeded", t.succeeded, n)
	return rep, nil
}
