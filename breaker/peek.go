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
// It is plain commands, no script: a read of the state, the call's count
// (HINCRBY of the current bucket's field, and the window's expiry), and,
// once per bucket in this process, the pruning of the fields that left the
// window. The count is made before the state is known: a call counted
// while the breaker is not closed is never made (the caller asks Allow,
// which counts it again should the breaker have closed in between), but it
// cannot skew the failure rate: the window is deleted when the breaker
// opens and again when it closes, and is read only while closed.
func (b *Breaker) AllowIn(ctx context.Context, pipe redis.Pipeliner, model string) func() (p Permit, settled bool) {
	bucket := b.cfg.Now().UnixMilli() / b.width.Milliseconds()
	key, win := b.Key(model), b.windowKey(model)
	state := pipe.HMGet(ctx, key, stateField, streakField)
	pipe.HIncrBy(ctx, win, callsField(bucket), 1)
	pipe.PExpire(ctx, win, time.Duration(b.ttl())*time.Millisecond)
	if stale := b.stale(model, bucket); len(stale) > 0 {
		pipe.HDel(ctx, win, stale...)
	}
	return func() (Permit, bool) {
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

// stale returns, the first time this process counts a call of model in
// bucket, the window fields of the buckets that left the window since its
// last count (at most one window's worth: older ones, left by an idle
// fleet, go with the next failure's record.lua or the key's expiry), and
// nil for every later call in the same bucket. So each process prunes what
// it passes, about one HDEL a second per model, and the window hash holds
// little more than its buckets.
func (b *Breaker) stale(model string, bucket int64) []string {
	last := b.pruned(model)
	prev := last.Load()
	if prev >= bucket || !last.CompareAndSwap(prev, bucket) {
		return nil
	}
	from := max(prev, bucket-b.nb) - b.nb // buckets from+1 .. bucket-nb left the window
	var fields []string
	for n := from + 1; n <= bucket-b.nb; n++ {
		fields = append(fields, callsField(n), failuresField(n))
	}
	return fields
}

// pruned returns this process's last bucket of model's window pruned by
// AllowIn.
func (b *Breaker) pruned(model string) *atomic.Int64 {
	if v, ok := b.prunedAt.Load(model); ok {
		return v.(*atomic.Int64)
	}
	v, _ := b.prunedAt.LoadOrStore(model, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// callsField and failuresField name a bucket's counters in the window hash
// (as allow.lua and record.lua do).
func callsField(bucket int64) string    { return "c" + strconv.FormatInt(bucket, 10) }
func failuresField(bucket int64) string { return "f" + strconv.FormatInt(bucket, 10) }

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
