package fakeupstream

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// bucket is one per-minute budget: a token bucket of capacity tokens,
// refilled continuously at limit per minute. Time is always passed in. A
// bucket with limit 0 is unlimited.
type bucket struct {
	limit    int64
	capacity float64
	level    float64
	last     time.Time
}

func newBucket(limit, burst int64, now time.Time) bucket {
	capacity := float64(limit)
	if burst > 0 {
		capacity = float64(burst)
	}
	return bucket{limit: limit, capacity: capacity, level: capacity, last: now}
}

func (b *bucket) on() bool { return b.limit > 0 }

// perNano is the refill rate in units per nanosecond.
func (b *bucket) perNano() float64 { return float64(b.limit) / float64(time.Minute) }

// refill brings the level up to now. A clock that goes backwards refills
// nothing.
func (b *bucket) refill(now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.level = math.Min(b.capacity, b.level+float64(dt)*b.perNano())
		b.last = now
	}
}

// epsilon absorbs float rounding so that waiting exactly the advertised
// retry-after-ms always suffices.
const epsilon = 1e-6

// wait returns how long until n units are available (0: now).
func (b *bucket) wait(n float64) time.Duration {
	if b.level+epsilon >= n {
		return 0
	}
	return ceilMS((n - b.level) / b.perNano())
}

// untilFull returns how long until the bucket is full again: OpenAI's
// x-ratelimit-reset-* value.
func (b *bucket) untilFull() time.Duration {
	return ceilMS((b.capacity - b.level) / b.perNano())
}

func (b *bucket) remaining() int64 { return max(0, int64(math.Floor(b.level+epsilon))) }

func (b *bucket) used() int64 { return max(0, int64(math.Round(b.capacity-b.level))) }

// ceilMS rounds ns nanoseconds up to a whole millisecond.
func ceilMS(ns float64) time.Duration {
	if ns <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(ns/float64(time.Millisecond))) * time.Millisecond
}

// formatReset formats a duration the way OpenAI's x-ratelimit-reset-* and
// "Please try again in" do: Go duration syntax to the millisecond ("1s",
// "6m0s", "20ms", "1.234s").
func formatReset(d time.Duration) string { return d.Round(time.Millisecond).String() }

// limitState is what the x-ratelimit-* headers report.
type limitState struct {
	rpm, tpm           int64
	remReq, remTok     int64
	resetReq, resetTok time.Duration
}

// setHeaders writes the x-ratelimit-* headers of the limits that are set.
func (st limitState) setHeaders(h http.Header) {
	if st.rpm > 0 {
		h.Set("x-ratelimit-limit-requests", strconv.FormatInt(st.rpm, 10))
		h.Set("x-ratelimit-remaining-requests", strconv.FormatInt(st.remReq, 10))
		h.Set("x-ratelimit-reset-requests", formatReset(st.resetReq))
	}
	if st.tpm > 0 {
		h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(st.tpm, 10))
		h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(st.remTok, 10))
		h.Set("x-ratelimit-reset-tokens", formatReset(st.resetTok))
	}
}

// verdict is the limiter's answer to one request.
type verdict struct {
	ok bool
	// tooLarge: the request's tokens exceed the whole TPM capacity; it can
	// never pass.
	tooLarge bool
	// kind is "requests" or "tokens": the budget that refused.
	kind      string
	limit     int64
	used      int64
	requested int64
	wait      time.Duration
	state     limitState
}

// limiter enforces RPM and TPM together: a request passes only when both
// buckets have room, and only a passing request is charged.
type limiter struct {
	mu  sync.Mutex
	rpm bucket
	tpm bucket
	// cfg kept to rebuild the buckets on reset.
	rpmLimit, rpmBurst, tpmLimit, tpmBurst int64
}

func newLimiter(cfg Config, now time.Time) *limiter {
	l := &limiter{rpmLimit: cfg.RPM, rpmBurst: cfg.BurstRequests, tpmLimit: cfg.TPM, tpmBurst: cfg.BurstTokens}
	l.reset(now)
	return l
}

func (l *limiter) reset(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpm = newBucket(l.rpmLimit, l.rpmBurst, now)
	l.tpm = newBucket(l.tpmLimit, l.tpmBurst, now)
}

func (l *limiter) stateLocked() limitState {
	st := limitState{rpm: l.rpm.limit, tpm: l.tpm.limit}
	if l.rpm.on() {
		st.remReq, st.resetReq = l.rpm.remaining(), l.rpm.untilFull()
	}
	if l.tpm.on() {
		st.remTok, st.resetTok = l.tpm.remaining(), l.tpm.untilFull()
	}
	return st
}

// peek returns the header state at now without charging anything.
func (l *limiter) peek(now time.Time) limitState {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpm.refill(now)
	l.tpm.refill(now)
	return l.stateLocked()
}

// take charges one request of tokens at now if both budgets allow it. When
// both refuse, the verdict names the one with the longer wait so that
// retrying after it succeeds.
func (l *limiter) take(now time.Time, tokens int64) verdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpm.refill(now)
	l.tpm.refill(now)
	if l.tpm.on() && float64(tokens) > l.tpm.capacity {
		return verdict{tooLarge: true, kind: "tokens", limit: int64(l.tpm.capacity), requested: tokens, state: l.stateLocked()}
	}
	var v verdict
	if l.rpm.on() {
		if w := l.rpm.wait(1); w > 0 {
			v = verdict{kind: "requests", limit: l.rpm.limit, used: l.rpm.used(), requested: 1, wait: w}
		}
	}
	if l.tpm.on() {
		if w := l.tpm.wait(float64(tokens)); w > 0 && w > v.wait {
			v = verdict{kind: "tokens", limit: l.tpm.limit, used: l.tpm.used(), requested: tokens, wait: w}
		}
	}
	if v.wait > 0 {
		v.state = l.stateLocked()
		return v
	}
	if l.rpm.on() {
		l.rpm.level = max(0, l.rpm.level-1)
	}
	if l.tpm.on() {
		l.tpm.level = max(0, l.tpm.level-float64(tokens))
	}
	return verdict{ok: true, state: l.stateLocked()}
}
