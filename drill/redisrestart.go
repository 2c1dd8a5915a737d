package drill

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// RedisRestartAlways is drill 2 with appendfsync always: every write is on
// disk before Redis answers, so a killed Redis loses nothing.
func RedisRestartAlways(ctx context.Context, o Options) (*Report, error) {
	return redisRestart(ctx, o, "always")
}

// RedisRestartEverysec is drill 2 with appendfsync everysec (Redis's
// default AOF mode): writes reach the kernel at once and the disk once a
// second. A killed Redis process loses nothing the kernel holds; a host
// crash or power cut can lose the last second or two of acknowledged
// writes (enqueues, results, task state), which this drill cannot cause.
func RedisRestartEverysec(ctx context.Context, o Options) (*Report, error) {
	return redisRestart(ctx, o, "everysec")
}

// redisRestart: a batch in flight, Redis (the drill's own, with AOF) killed
// with SIGKILL and restarted on the same port and directory after a pause.
// Workers and the producer must reconnect on their own, log clearly (and
// not flood) while Redis is away, and lose no job.
func redisRestart(ctx context.Context, o Options, fsync string) (*Report, error) {
	rep := &Report{Drill: "2 Redis SIGKILL+restart, appendfsync " + fsync, Size: o.Size}
	rng := newRand(o, rep)
	n := o.Size.pick(300, 3000)
	outage := time.Duration(o.Size.pick(2, 8)) * time.Second
	e, err := newEnv(ctx, o, setup{name: "redis-" + fsync, fsync: fsync, fake: fakeupstream.Config{Latency: 20 * time.Millisecond}, concurrency: 4})
	if err != nil {
		return rep, err
	}
	defer e.close()
	ws, err := e.startFleet(ctx, 3)
	if err != nil {
		return rep, err
	}
	const batch = "redis"
	if err := e.enqueue(ctx, batch, n); err != nil {
		return rep, err
	}
	mark := n/4 + rng.IntN(n/4)
	if err := waitUntil(ctx, time.Minute, func() (bool, error) { return e.calls.requests() >= mark, nil }); err != nil {
		return rep, fmt.Errorf("waiting for %d upstream calls: %w", mark, err)
	}
	offsets := logSizes(ws)
	e.redis.Kill()
	down := time.Now()
	e.logf("redis killed (SIGKILL) after %d upstream calls", e.calls.requests())
	rep.note("Redis SIGKILLed after %d upstream calls, restarted after %v", e.calls.requests(), outage)

	// The producer while Redis is away: a clear error, no hang.
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	start := time.Now()
	_, perr := e.prod.Enqueue(pctx, lateJob("away"))
	cancel()
	took := time.Since(start)
	rep.check(perr != nil, "Enqueue succeeded while Redis was down")
	rep.check(took < 15*time.Second, "Enqueue took %v to fail while Redis was down", took.Round(time.Millisecond))
	if perr != nil {
		rep.note("producer while Redis is away: error after %v: %s", took.Round(time.Millisecond), clip(perr.Error(), 120))
	}
	select {
	case <-ctx.Done():
		return rep, ctx.Err()
	case <-time.After(max(0, outage-time.Since(down))):
	}
	if err := e.redis.Restart(ctx); err != nil {
		return rep, err
	}
	up := time.Now()
	e.logf("redis restarted on %s", e.redis.Addr)
	outageLogs := logSizes(ws)

	// The same producer after the restart: it reconnects by itself.
	if _, err := e.prod.Enqueue(ctx, lateJob("late")); err != nil {
		rep.fail("producer did not recover after the restart: %v", err)
	} else {
		n++ // the late job is part of the batch
	}
	before := e.calls.requests()
	if err := waitUntil(ctx, 30*time.Second, func() (bool, error) { return e.calls.requests() > before, nil }); err != nil {
		rep.fail("no upstream call within 30 s of the restart: workers did not resume")
	} else {
		rep.note("workers resumed %.1f s after Redis answered again", time.Since(up).Seconds())
	}
	// Tasks that finished while Redis was away cannot be marked done or
	// retried: asynq v0.26's syncer retries those writes with a context
	// its caller already cancelled (processor.go retry/markAsComplete:
	// "Will retry syncing" never succeeds), so they stay active until
	// their lease expires and the recoverer runs.
	if _, _, err := e.recoverOrphans(ctx, rep, up, o.Size); err != nil {
		return rep, err
	}
	t, _, err := e.settle(ctx, rep, batch, n, time.Duration(o.Size.pick(60, 180))*time.Second)
	if err != nil {
		return rep, err
	}
	for _, w := range ws {
		rep.check(w.Alive(), "worker %d exited while Redis was away: %s", w.N, tail(w.LogPath, 3))
	}
	lines, raw, sample := outageLines(ws, offsets, outageLogs)
	secs := up.Sub(down).Seconds()
	rep.note("worker log while Redis was away (%.1f s): %d lines from %d workers (%.1f lines/s per worker), %d of them not JSON; most frequent: %s",
		secs, lines, len(ws), float64(lines)/secs/float64(len(ws)), raw, sample)
	rep.check(float64(lines)/secs/float64(len(ws)) < 50, "workers flood the log while Redis is away: %d lines in %.1f s", lines, secs)
	calls := e.calls.requests()
	rep.note("upstream calls %d for %d jobs: %d jobs paid twice (result not stored while Redis was away)", calls, n, t.dupJobs)
	rep.check(t.succeeded == n, "%d of %d jobs succeeded", t.succeeded, n)
	if fsync == "everysec" {
		rep.note("everysec: a killed Redis process loses nothing written (the kernel keeps it); a host crash or power cut can lose the last 1-2 s of acknowledged writes — enqueues, results, task moves — which this drill cannot cause; use always where that matters")
	} else {
		rep.note("always: Redis answers only after fsync, so nothing acknowledged is lost even on a host crash")
	}
	return rep, nil
}

// lateJob is a job enqueued one at a time, into the drill's batch.
func lateJob(name string) *jobs.Job {
	return &jobs.Job{ID: "redis:" + name, CustomID: name, BatchID: "redis",
		Body: []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"drill-job:` + name + ` answer"}],"max_tokens":16}`)}
}

// logSizes returns each worker log's size now.
func logSizes(ws []*fleet.Worker) []int64 {
	out := make([]int64, len(ws))
	for i, w := range ws {
		if fi, err := os.Stat(w.LogPath); err == nil {
			out[i] = fi.Size()
		}
	}
	return out
}

// outageLines counts the log lines written between two offsets, how many
// are not JSON (written around llmq's logger), and returns the most
// frequent message as a sample.
func outageLines(ws []*fleet.Worker, from, to []int64) (lines, raw int, sample string) {
	msgs := map[string]int{}
	for i, w := range ws {
		b, err := os.ReadFile(w.LogPath)
		if err != nil || to[i] > int64(len(b)) {
			continue
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b[from[i]:to[i]])), "\n") {
			if l == "" {
				continue
			}
			lines++
			msg := jsonField(l, "message")
			if !strings.HasPrefix(l, "{") {
				raw++
				if j := strings.Index(l, ".go:"); j >= 0 { // drop go-redis's timestamp prefix
					l = l[j:]
				}
				msg = "(not JSON) " + l
			}
			msgs[clip(msg, 110)]++
		}
	}
	best, bestN := "(none)", 0
	for m, c := range msgs {
		if c > bestN || c == bestN && m < best {
			best, bestN = m, c
		}
	}
	return lines, raw, fmt.Sprintf("%q ×%d", best, bestN)
}

// jsonField returns a string field of a JSON log line, or the line.
func jsonField(line, field string) string {
	key := `"` + field + `":"`
	i := strings.Index(line, key)
	if i < 0 {
		return line
	}
	rest := line[i+len(key):]
	if j := strings.Index(rest, `"`); j >= 0 {
		return rest[:j]
	}
	return rest
}

// clip shortens s to n runes.
func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}
