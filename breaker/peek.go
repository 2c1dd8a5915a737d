package breaker

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// AllowIn queues on pipe the common case of Allow — a closed breaker —
// so a caller can batch it with other reads in one round trip. Like Allow
// it counts the call in the rolling window and refreshes this process's
// view of the failures in a row (so a later Success ends a fleet-wide
// streak); unlike Allow it never makes a transition or takes the probe.
// The returned function, called after pipe.Exec, gives the Permit with
// settled true when the breaker was closed (allowed); settled false means
// it is not closed (or the read failed) and the caller must ask Allow.
//
// It is plain commands: a read of the state and the call's count (HINCRBY
// of the current bucket's field); only the first call of each bucket in
// this process adds prune.lua (stale fields out, the window's expiry
// kept). The count is made before the state is known: a call counted while
// the breaker is not closed is never made, and the caller asks Allow. Such
// counts do not last: the window is deleted when the breaker opens and
// again when it closes, and read only while closed. Only a count landing
// just after the probe's close (the read and the count are not atomic)
// reaches the fresh window — a call too many, which lowers the failure
// rate by a hair and never opens the breaker.
func (b *Breaker) AllowIn(ctx context.Context, pipe redis.Pipeliner, model string) func() (p Permit, settled bool) {
	now := b.cfg.Now()
	bucket := now.UnixMilli() / b.width.Milliseconds()
	key, win := b.Key(model), b.windowKey(model)
	state := pipe.HMGet(ctx, key, stateField, streakField)
	count := pipe.HIncrBy(ctx, win, callsField(bucket), 1)
	var prune *redis.Cmd
	if b.advance(model, bucket) {
		prune = b.prune.EvalSha(ctx, pipe, []string{win}, b.pruneArgs(now)...)
	}
	return func() (Permit, bool) {
		if prune != nil && prune.Err() != nil || prune == nil && count.Val() == 1 {
			// The pipelined prune failed (NOSCRIPT after a Redis restart:
			// Run loads it), or this call created the bucket's field
			// without one — the window may be a new hash, with no expiry.
			_ = b.prune.Run(ctx, b.rdb, []string{win}, b.pruneArgs(now)...).Err()
		}
		h, err := state.Result()
		if err != nil || len(h) != 2 {
			return Permit{Model: model}, false
		}
		if st, _ := h[0].(string); st != "" && State(st) != Closed {
			return Permit{Model: model}, false
		}
		s, _ := h[1].(string)
		b.streak(model).Store(atoi(s))
		return Permit{Model: model, Allowed: true, State: Closed}, true
	}
}

// advance reports whether bucket is the first bucket this process counts a
// call of model in since an earlier one: true once per bucket (per second
// with the default window), when the caller runs prune.lua.
func (b *Breaker) advance(model string, bucket int64) bool {
	last := perModel[atomic.Int64](&b.buckets, model)
	prev := last.Load()
	return prev < bucket && last.CompareAndSwap(prev, bucket)
}

// pruneArgs are prune.lua's arguments at now.
func (b *Breaker) pruneArgs(now time.Time) []any {
	return []any{now.UnixMilli(), b.width.Milliseconds(), b.nb, b.ahead, b.ttl()}
}

// callsField names a bucket's count of calls in the window hash (as
// allow.lua does; record.lua's failures are f<bucket>).
func callsField(bucket int64) string { return "c" + strconv.FormatInt(bucket, 10) }

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
// On an open or half-open breaker the field is absent already (a trip
// removes it, as every path that ends a streak does), so the HDEL changes
// nothing there either.
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
