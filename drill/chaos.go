package drill

import (
	"context"
	"fmt"
	"time"

	"github.com/llmq/llmq/fakeupstream"
)

// chaosFaults is the upstream's random fault mix of drill 5.
const chaosFaults = "random:500=5%,reset=2%,hang=1%,ratelimit:500ms=3%,latency=200ms@5%"

// Chaos is drill 5: the fake upstream misbehaves at random — 5% 500s, 2%
// connection resets, 1% hangs, 3% 429s, latency spikes — plus two bursts
// of forty 429s in a row. With a 1 s response-header timeout and short
// backoff, every job must succeed or be dead-lettered for a classified
// reason; none lost, none stuck.
func Chaos(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "5 upstream chaos", Size: o.Size}
	rng := newRand(o, rep)
	n := o.Size.pick(300, 5000)
	fcfg := fakeupstream.Config{Latency: 10 * time.Millisecond, Faults: chaosFaults, Seed: int64(rng.Uint64() >> 1)}
	e, err := newEnv(ctx, o, setup{name: "chaos", fake: fcfg, concurrency: 8, headerTimeout: time.Second,
		retryBase: 50 * time.Millisecond, retryCap: time.Second, rpm: 1_000_000, tpm: 1_000_000_000})
	if err != nil {
		return rep, err
	}
	defer e.close()
	if _, err := e.startFleet(ctx, 3); err != nil {
		return rep, err
	}
	const batch = "chaos"
	if err := e.enqueue(ctx, batch, n); err != nil {
		return rep, err
	}
	for _, frac := range []int{3, 6} {
		mark := n * frac / 10
		if err := waitUntil(ctx, 3*time.Minute, func() (bool, error) { return e.calls.requests() >= mark, nil }); err != nil {
			return rep, fmt.Errorf("waiting for %d upstream calls: %w", mark, err)
		}
		before := e.fake.Stats().ByFault["ratelimit"]
		if err := e.fake.SetFaults("ratelimit:300msx40"); err != nil {
			return rep, err
		}
		if err := waitUntil(ctx, time.Minute, func() (bool, error) { return e.fake.Stats().ByFault["ratelimit"] >= before+40, nil }); err != nil {
			return rep, fmt.Errorf("429 burst not consumed: %w", err)
		}
		if err := e.fake.SetFaults(chaosFaults); err != nil {
			return rep, err
		}
		e.logf("429 burst of 40 served at %d calls", mark)
	}
	_, took, err := e.settle(ctx, rep, batch, n, time.Duration(o.Size.pick(90, 300))*time.Second)
	if err != nil {
		return rep, err
	}
	opened := 0
	for _, w := range e.procs() {
		opens, reopens, err := breakerTransitions(w.LogPath)
		if err != nil {
			return rep, err
		}
		opened += opens + reopens
	}
	bc := e.fleet.Settings().Breaker
	rep.note("the breaker (%d in a row, or %d %% of >= %d calls in %s; open scaled to %s) opened or reopened %d times",
		bc.Failures, bc.FailureRate, bc.MinCalls, bc.Window, bc.Open, opened)
	rep.check(opened == 0, "background faults opened the breaker %d times: it must open on outages, not on noise", opened)
	st := e.fake.Stats()
	rep.note("upstream: %d requests for %d jobs; faults %s; answers %s; drained %.1f s after the last burst",
		st.Requests, n, counts(st.ByFault), counts(st.ByStatus), took.Seconds())
	return rep, nil
}

// counts renders a map of counters sorted by key.
func counts(m map[string]int64) string { return "{" + sortedCounts(m, " ") + "}" }
