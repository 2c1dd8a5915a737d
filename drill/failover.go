package drill

import (
	"context"
	"fmt"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/redistopo"
)

// ClusterFailover is the Redis Cluster drill: two workers drain a batch
// from a 3-master + 3-replica cluster; the master holding the queue's slot
// is killed with SIGKILL mid-batch and its replica takes over. Every job
// must end with exactly one result, and no more jobs may be paid twice
// than were in flight.
func ClusterFailover(ctx context.Context, o Options) (*Report, error) {
	return failover(ctx, o, "cluster")
}

// SentinelFailover is the same drill with the Sentinel-managed master
// killed: the Sentinels promote the replica and every client follows.
func SentinelFailover(ctx context.Context, o Options) (*Report, error) {
	return failover(ctx, o, "sentinel")
}

// failoverWorkers and failoverConcurrency bound the jobs in flight.
const (
	failoverWorkers     = 2
	failoverConcurrency = 4
)

func failover(ctx context.Context, o Options, topology string) (*Report, error) {
	rep := &Report{Drill: "Redis " + topology + " failover (master SIGKILL)", Size: o.Size}
	rng := newRand(o, rep)
	n := o.Size.pick(300, 1500)
	e, err := newEnv(ctx, o, setup{name: topology, topology: topology,
		fake: fakeupstream.Config{Latency: 20 * time.Millisecond}, concurrency: failoverConcurrency})
	if err != nil {
		return rep, err
	}
	defer e.close()
	if _, err := e.startFleet(ctx, failoverWorkers); err != nil {
		return rep, err
	}
	const batch = "failover"
	if err := e.enqueue(ctx, batch, n); err != nil {
		return rep, err
	}
	mark := n/4 + rng.IntN(n/4)
	if err := waitUntil(ctx, time.Minute, func() (bool, error) { return e.calls.requests() >= mark, nil }); err != nil {
		return rep, fmt.Errorf("waiting for %d upstream calls: %w", mark, err)
	}
	var (
		master   *redistopo.Server
		promoted func() (bool, error)
	)
	switch topology {
	case "cluster":
		if master, err = e.clu.MasterOf(ctx, "asynq:{"+e.queue+"}:pending"); err != nil {
			return rep, err
		}
		promoted = func() (bool, error) {
			m, err := e.clu.MasterOf(ctx, "asynq:{"+e.queue+"}:pending")
			return err == nil && m != master && m.Alive(), nil
		}
	default:
		if master, err = e.sen.Master(ctx); err != nil {
			return rep, err
		}
		promoted = func() (bool, error) {
			m, err := e.sen.Master(ctx)
			return err == nil && m != master && m.Alive(), nil
		}
	}
	calls := e.calls.requests()
	master.Kill()
	killed := time.Now()
	e.logf("master %s holding the queue killed (SIGKILL) after %d upstream calls", master.Addr, calls)
	rep.note("%s master %s (the queue's) SIGKILLed after %d upstream calls", topology, master.Addr, calls)

	var up time.Time
	if err := waitUntil(ctx, time.Minute, promoted); err != nil {
		rep.fail("the replica was not promoted within a minute of the kill")
		return rep, nil
	}
	up = time.Now()
	e.logf("replica promoted %.1f s after the kill", up.Sub(killed).Seconds())
	// The stall: from the kill to the first job answered whose call began
	// after the kill — a job dequeued once the queue's slot was served again.
	var firstDone time.Time
	if err := waitUntil(ctx, time.Minute, func() (bool, error) {
		firstDone = e.calls.firstOKStartedAfter(killed)
		return !firstDone.IsZero(), nil
	}); err != nil {
		rep.fail("no job was served within a minute of the failover")
		return rep, nil
	}
	rep.note("replica promoted %.1f s after the kill; first job served after the kill %.1f s after it (the stall)",
		up.Sub(killed).Seconds(), firstDone.Sub(killed).Seconds())
	// Tasks whose completion could not be recorded while the slot was
	// down stay active until asynq's recoverer requeues them.
	if _, _, err := e.recoverOrphans(ctx, rep, up, o.Size); err != nil {
		return rep, err
	}
	t, _, err := e.settle(ctx, rep, batch, n, time.Duration(o.Size.pick(90, 240))*time.Second)
	if err != nil {
		return rep, err
	}
	for _, w := range e.procs() {
		rep.check(w.Alive(), "worker %d exited during the failover: %s", w.N, tail(w.LogPath, 3))
	}
	inFlight := failoverWorkers * failoverConcurrency
	rep.check(t.succeeded == n, "%d of %d jobs succeeded", t.succeeded, n)
	rep.check(t.stored == n, "%d results stored for %d jobs", t.stored, n)
	rep.check(t.dupJobs <= inFlight, "%d jobs paid twice, more than the %d that can be in flight", t.dupJobs, inFlight)
	rep.note("upstream calls %d for %d jobs: %d jobs paid twice (≤ %d in flight); drained %.1f s after the kill",
		e.calls.requests(), n, t.dupJobs, inFlight, time.Since(killed).Seconds())
	return rep, nil
}
