package drill

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// RollingRestart is drill 3: during a batch, each of four workers in turn
// gets SIGTERM and is replaced once it has exited (a rolling deploy). A few
// calls are slow (4 s against a 2 s shutdown timeout), so some in-flight
// jobs finish and some are handed back to the queue. Each worker must exit
// cleanly within the shutdown timeout (plus 3 s of margin), nothing
// may be lost, and no job may be paid for twice beyond those in flight at a
// SIGTERM. A task a stopping worker failed to hand back would sit active
// until asynq's recoverer (55 s or more): the drain deadline of 45 s after
// the last restart catches it.
func RollingRestart(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "3 SIGTERM rolling restart", Size: o.Size}
	rng := newRand(o, rep)
	n := o.Size.pick(650, 5000)
	shutdown := 2 * time.Second
	fcfg := fakeupstream.Config{Latency: 150 * time.Millisecond, Faults: "random:latency=4s@2%", Seed: int64(rng.Uint64() >> 1)}
	e, err := newEnv(ctx, o, setup{name: "sigterm", fake: fcfg, concurrency: 4, shutdown: shutdown, headerTimeout: 10 * time.Second})
	if err != nil {
		return rep, err
	}
	defer e.close()
	ws := make([]*fleet.Worker, 4)
	for i := range ws {
		if ws[i], err = e.startWorker(ctx); err != nil {
			return rep, err
		}
	}
	const batch = "sigterm"
	if err := e.enqueue(ctx, batch, n); err != nil {
		return rep, err
	}
	inFlight, handedBack := 0, 0
	var slowest time.Duration
	for i := range ws {
		mark := n * (i + 1) / 6
		if err := waitUntil(ctx, 2*time.Minute, func() (bool, error) { return e.calls.requests() >= mark, nil }); err != nil {
			return rep, fmt.Errorf("waiting for %d upstream calls: %w", mark, err)
		}
		w := ws[i]
		fly := int(e.fake.Stats().InFlight)
		took, err := w.Term(shutdown + 3*time.Second)
		if err != nil {
			rep.fail("%v", err)
		}
		inFlight += fly
		handedBack += countLines(w.LogPath, "Quitting worker")
		slowest = max(slowest, took)
		e.logf("worker %d stopped by SIGTERM in %v (%d calls in flight fleet-wide)", w.N, took.Round(time.Millisecond), fly)
		if ws[i], err = e.startWorker(ctx); err != nil {
			return rep, err
		}
	}
	rep.note("4 workers SIGTERMed in turn, each replaced after its exit; slowest exit %.2f s (shutdown timeout %v); %d in-flight jobs handed back to the queue at the timeout",
		slowest.Seconds(), shutdown, handedBack)
	t, took, err := e.settle(ctx, rep, batch, n, 45*time.Second+time.Duration(o.Size.pick(0, 60))*time.Second)
	if err != nil {
		return rep, err
	}
	calls := e.calls.requests()
	rep.note("upstream calls %d for %d jobs (%d re-run after a shutdown cut them off); %d calls were in flight at the SIGTERMs; drained %.1f s after the last restart",
		calls, n, calls-n, inFlight, took.Seconds())
	rep.check(t.dupJobs <= inFlight, "%d jobs paid twice, more than the %d in flight at the SIGTERMs", t.dupJobs, inFlight)
	rep.check(t.succeeded == n, "%d of %d jobs succeeded", t.succeeded, n)
	return rep, nil
}

// countLines returns how many lines of a file contain s.
func countLines(path, s string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), s)
}
