package drill

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// Kill9 is drill 1: four worker processes drain a batch; two of them are
// killed with SIGKILL at random moments and replaced. Every job must end
// with exactly one stored result, none lost. It measures how long asynq
// took to give the killed workers' tasks (orphans) back to the queue and
// how many upstream calls were made twice.
//
// asynq v0.26 cannot be told to recover sooner: a task's lease is 30 s
// (rdb.LeaseDuration, a constant), the recoverer only takes tasks whose
// lease expired 30 s or more ago (recoverer.go, a constant "clock skew"
// margin), and it runs when a server starts and then every minute
// (server.go: interval 1*time.Minute, not in asynq.Config). An orphan
// therefore waits 30 to 120 s. The long form waits for that; the short
// form (CI) ages the orphans' leases in Redis by 61 s — as if the clock had
// moved on — and starts the second replacement, whose recoverer runs at
// start, so the same code path requeues them in seconds.
func Kill9(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "1 kill -9 mid-batch", Size: o.Size}
	rng := newRand(o, rep)
	n := o.Size.pick(400, 5000)
	e, err := newEnv(ctx, o, setup{name: "kill9", fake: fakeupstream.Config{Latency: 40 * time.Millisecond}, concurrency: 4})
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
	if err := e.enqueue(ctx, "kill9", n); err != nil {
		return rep, err
	}
	// Two random moments between 10% and ~70% of the batch's upstream calls.
	marks := []int{n/10 + rng.IntN(n/4), 0}
	marks[1] = marks[0] + n/10 + rng.IntN(n/4)
	victims := rng.Perm(len(ws))[:2]
	var kills [2]time.Time
	for i, mark := range marks {
		if err := waitUntil(ctx, 2*time.Minute, func() (bool, error) { return e.calls.requests() >= mark, nil }); err != nil {
			return rep, fmt.Errorf("waiting for %d upstream calls: %w", mark, err)
		}
		w := ws[victims[i]]
		w.Kill()
		kills[i] = time.Now()
		at := e.calls.requests()
		e.logf("kill -9 worker %d (pid %d) after %d upstream calls", w.N, w.PID, at)
		rep.note("kill -9 worker %d after %d upstream calls (batch of %d)", w.N, at, n)
		if i == 0 || o.Size == Long { // short form: recoverOrphans starts the 2nd replacement
			if _, err := e.startWorker(ctx); err != nil {
				return rep, err
			}
		}
	}
	orphans, requeued, err := e.recoverOrphans(ctx, rep, kills[1], o.Size)
	if err != nil {
		return rep, err
	}
	if len(orphans) > 0 && !requeued.IsZero() {
		rep.note("orphans requeued %.1f s after the 1st kill, %.1f s after the 2nd", requeued.Sub(kills[0]).Seconds(), requeued.Sub(kills[1]).Seconds())
	}
	t, took, err := e.settle(ctx, rep, "kill9", n, 3*time.Minute)
	if err != nil {
		return rep, err
	}
	calls := e.calls.requests()
	rep.note("upstream calls %d for %d jobs: %d extra (paid twice: %d jobs); drained %.1f s after the orphans were found",
		calls, n, calls-n, t.dupExtra, took.Seconds())
	rep.check(t.succeeded == n, "%d of %d jobs succeeded; the upstream never failed", t.succeeded, n)
	rep.check(t.dupJobs <= len(orphans), "%d jobs paid twice, more than the %d orphans", t.dupJobs, len(orphans))
	return rep, nil
}

// orphans waits until the fleet has drained everything but the tasks the
// killed workers held, and returns those: active tasks whose lease was not
// extended since the last kill. Live tasks finish in well under a second
// (the fake answers in 40 ms), so once nothing is pending or retrying and
// every active task's lease predates the kill, the active list is the
// orphans. asynq cannot requeue them before 55 s after a kill.
func (e *env) orphans(ctx context.Context, lastKill time.Time) ([]string, error) {
	var ids []string
	prev, prevAt := "", time.Time{}        // the active list as last seen, and since when
	limit := float64(lastKill.Unix() + 30) // a lease granted or extended after the kill ends later
	err := waitUntil(ctx, 50*time.Second, func() (bool, error) {
		if time.Since(lastKill) < 1500*time.Millisecond {
			return false, nil
		}
		p, _, s, r, err := e.queueLeft(ctx)
		if err != nil || p+s+r > 0 {
			return false, nil
		}
		active, err := e.rdb.LRange(ctx, "asynq:{"+e.queue+"}:active", 0, -1).Result()
		if err != nil {
			return false, nil
		}
		leases, err := e.rdb.ZRangeWithScores(ctx, "asynq:{"+e.queue+"}:lease", 0, -1).Result()
		if err != nil {
			return false, nil
		}
		score := map[string]float64{}
		for _, z := range leases {
			score[z.Member.(string)] = z.Score
		}
		for _, id := range active {
			if s, ok := score[id]; !ok || s > limit {
				prevAt = time.Time{}
				return false, nil
			}
		}
		// The same list a second apart: no live task among them finished.
		if now := strings.Join(active, ","); prevAt.IsZero() || now != prev {
			prev, prevAt = now, time.Now()
			return false, nil
		}
		if time.Since(prevAt) < time.Second {
			return false, nil
		}
		ids = active
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for the live work to drain after the kills: %w", err)
	}
	return ids, nil
}

// recoverOrphans waits for the live work to drain after event (a kill, a
// Redis restart), takes the tasks left active with leases nobody extends
// (orphans) and sees them requeued: by asynq's own recoverer in the long
// form, or — short form — by aging their leases 61 s and starting a worker,
// whose recoverer runs at start. It returns the orphans and when the last
// of them left the active list (zero when there were none or asynq did not
// requeue them within 4 minutes, which is a failure).
func (e *env) recoverOrphans(ctx context.Context, rep *Report, event time.Time, size Size) ([]string, time.Time, error) {
	orphans, err := e.orphans(ctx, event)
	if err != nil {
		return nil, time.Time{}, err
	}
	rep.note("%d tasks orphaned (left active, lease not extended) once the live work drained", len(orphans))
	if len(orphans) == 0 {
		return nil, time.Time{}, nil
	}
	if size == Short {
		if err := e.ageLeases(ctx, orphans, 61*time.Second); err != nil {
			return nil, time.Time{}, err
		}
		rep.note("short form: orphans' leases aged 61 s, a worker started (its recoverer runs at start); unaided, asynq takes 55-120 s")
		if _, err := e.startWorker(ctx); err != nil {
			return nil, time.Time{}, err
		}
	}
	requeued, err := e.waitRequeued(ctx, orphans, 4*time.Minute)
	if err != nil {
		return nil, time.Time{}, err
	}
	if requeued.IsZero() {
		rep.fail("asynq did not requeue the %d orphans within 4 min", len(orphans))
	} else if size == Long {
		rep.note("asynq's recoverer requeued the orphans %.1f s after the event (lease 30 s + 30 s cutoff + a tick every 60 s per server)", requeued.Sub(event).Seconds())
	}
	return orphans, requeued, nil
}

// ageLeases moves the leases of ids back by d: to asynq's recoverer they
// look as if d had passed since they were last extended.
func (e *env) ageLeases(ctx context.Context, ids []string, d time.Duration) error {
	key := "asynq:{" + e.queue + "}:lease"
	for _, id := range ids {
		s, err := e.rdb.ZScore(ctx, key, id).Result()
		if err != nil {
			return fmt.Errorf("lease of %s: %w", id, err)
		}
		if err := e.rdb.ZAddXX(ctx, key, redis.Z{Score: s - d.Seconds(), Member: id}).Err(); err != nil {
			return fmt.Errorf("age lease of %s: %w", id, err)
		}
	}
	return nil
}

// waitRequeued waits until none of ids is active any more and returns when
// that was observed (zero when within passed first).
func (e *env) waitRequeued(ctx context.Context, ids []string, within time.Duration) (time.Time, error) {
	if len(ids) == 0 {
		return time.Time{}, nil
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var at time.Time
	err := waitUntil(ctx, within, func() (bool, error) {
		active, err := e.rdb.LRange(ctx, "asynq:{"+e.queue+"}:active", 0, -1).Result()
		if err != nil {
			return false, nil
		}
		for _, id := range active {
			if want[id] {
				return false, nil
			}
		}
		at = time.Now()
		return true, nil
	})
	if err != nil && ctx.Err() != nil {
		return time.Time{}, err
	}
	return at, nil
}

// newRand returns the drill's random source and notes its seed.
func newRand(o Options, rep *Report) *rand.Rand {
	seed := o.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	rep.note("seed %s", strconv.FormatUint(seed, 10))
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}
