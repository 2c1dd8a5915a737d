package breaker

import (
	"context"
	_ "embed"

	"github.com/redis/go-redis/v9"
)

//go:embed peek.lua
var peekLua string

// AllowIn queues on pipe the common case of Allow — a closed breaker —
// so a caller can batch it with other reads in one round trip. Like Allow
// it counts the call in the rolling window and refreshes this process's
// view of the failures in a row (so a later Success ends a fleet-wide
// streak); unlike Allow it never makes a transition or takes the probe.
// The returned function, called after pipe.Exec, gives the Permit with
// settled true when the breaker was closed (allowed); settled false means
// it is not closed (or the read failed) and the caller must ask Allow.
//
// The script is sent by its SHA1 (EVALSHA). A pipeline cannot fall back
// on NOSCRIPT (after a Redis restart or failover) within its round trip:
// that answer is unsettled (the caller asks Allow, which has not counted
// the call yet) and loads the script for the next read.
func (b *Breaker) AllowIn(ctx context.Context, pipe redis.Pipeliner, model string) func() (p Permit, settled bool) {
	cmd := b.peek.EvalSha(ctx, pipe, []string{b.Key(model), b.windowKey(model)},
		b.cfg.Now().UnixMilli(), b.ttl(), b.width.Milliseconds(), b.nb)
	return func() (Permit, bool) {
		res, err := cmd.Slice()
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			_ = b.peek.Load(ctx, b.rdb).Err() // on failure, the next read tries again
		}
		if err != nil || len(res) != 2 || toInt(res[0]) != 1 {
			return Permit{Model: model}, false
		}
		b.streak(model).Store(toInt(res[1]))
		return Permit{Model: model, Allowed: true, State: Closed}, true
	}
}

// SuccessIn queues in pipe the record of an ordinary allowed call's
// success, for a caller that batches it with its own writes (the worker:
// with the save of the job's result). Record sends a success only when
// this process last saw failures in a row, to save a round trip, so a
// success right after another process's failure would not end the fleet's
// streak; batched, every success ends it at no extra round trip. The
// returned function, called after pipe.Exec, updates this process's view.
// A probe's success goes through Record: it closes the breaker.
//
// Ending a streak is one HDEL of the state hash's streak field (an absent
// field is a streak of 0): no script, and no write — so nothing for the
// AOF or the replicas — when there is no streak to end, the common case.
// On an open or half-open breaker the field is already 0 (a trip resets
// it), so the HDEL changes nothing there either.
func (b *Breaker) SuccessIn(ctx context.Context, pipe redis.Pipeliner, p Permit) func() {
	if !p.Allowed || p.Probe {
		return func() {}
	}
	cmd := pipe.HDel(ctx, b.Key(p.Model), streakField)
	return func() {
		if cmd.Err() == nil {
			b.streak(p.Model).Store(0)
		}
	}
}
