package fakeupstream

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/llmq/llmq/jobs"
)

// Accounting is how the fake charges a request's tokens to its TPM.
type Accounting string

// Accounting modes.
const (
	// AccountTokenizer charges the tokenizer's prompt count (jobs.Estimator
	// with jobs.MethodTokenizer, the chat format's overhead included) plus
	// the completion limit × n. The default.
	AccountTokenizer Accounting = "tokenizer"
	// AccountChars charges like a limiter that counts characters: per
	// message, the characters of its text content / 4 (rounded up) + 4,
	// plus the completion limit × n.
	AccountChars Accounting = "chars"
)

// Characters per token and tokens per message of AccountChars.
const (
	charsPerToken   = 4
	charsPerMessage = 4
)

// charge returns the tokens the limiter charges req, whose tokenizer cost
// is cost.
func (s *Server) charge(req *jobs.Request, cost jobs.Cost) int64 {
	if s.cfg.Accounting != AccountChars {
		return int64(cost.Total())
	}
	n := cost.CompletionTokens
	for _, m := range req.Messages {
		n += (textChars(m.Content)+charsPerToken-1)/charsPerToken + charsPerMessage
	}
	return int64(n)
}

// textChars counts the characters of a message content's text.
func textChars(raw json.RawMessage) int {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return utf8.RuneCountInString(s)
	}
	var parts []jobs.ContentPart
	if json.Unmarshal(raw, &parts) != nil {
		return 0
	}
	n := 0
	for _, p := range parts {
		n += utf8.RuneCountInString(p.Text)
	}
	return n
}

// bucket is one per-minute budget: a token bucket of capacity units,
// refilled continuously at limit per minute, kept by golang.org/x/time/rate.
// Time is always passed in. A bucket with limit 0 is unlimited.
type bucket struct {
	limit    int64
	capacity float64
	rl       *rate.Limiter
	now      time.Time // the latest instant seen; time never goes back
}

// newBucket returns a full bucket. Its capacity is burst, else quantum of
// the limit (at least 1), else a minute's limit.
func newBucket(limit, burst int64, quantum time.Duration, now time.Time) bucket {
	if limit == 0 {
		return bucket{}
	}
	capacity := limit
	switch {
	case burst > 0:
		capacity = burst
	case quantum > 0:
		capacity = max(1, int64(math.Ceil(float64(limit)*float64(quantum)/float64(time.Minute))))
	}
	return bucket{limit: limit, capacity: float64(capacity), rl: rate.NewLimiter(rate.Limit(float64(limit)/60), int(capacity)), now: now}
}

func (b *bucket) on() bool { return b.limit > 0 }

// perNano is the refill rate in units per nanosecond.
func (b *bucket) perNano() float64 { return float64(b.limit) / float64(time.Minute) }

// at moves the bucket's clock to now; a clock that goes backwards stays.
func (b *bucket) at(now time.Time) {
	if now.After(b.now) {
		b.now = now
	}
}

// level is what the bucket holds now.
func (b *bucket) level() float64 { return b.rl.TokensAt(b.now) }

// take charges n units now; the caller has checked that they fit.
func (b *bucket) take(n float64) { b.rl.ReserveN(b.now, int(math.Ceil(n-epsilon))) }

// epsilon absorbs float rounding so that waiting exactly the advertised
// retry-after-ms always suffices.
const epsilon = 1e-6

// wait returns how long until n units are available (0: now).
func (b *bucket) wait(n float64) time.Duration {
	level := b.level()
	if level+epsilon >= n {
		return 0
	}
	return ceilMS((n - level) / b.perNano())
}

// untilFull returns how long until the bucket is full again: OpenAI's
// x-ratelimit-reset-* value.
func (b *bucket) untilFull() time.Duration {
	return ceilMS((b.capacity - b.level()) / b.perNano())
}

func (b *bucket) remaining() int64 { return max(0, int64(math.Floor(b.level()+epsilon))) }

func (b *bucket) used() int64 { return max(0, int64(math.Round(b.capacity-b.level()))) }

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
	quantum                                time.Duration
}

func newLimiter(cfg Config, now time.Time) *limiter {
	l := &limiter{rpmLimit: cfg.RPM, rpmBurst: cfg.BurstRequests, tpmLimit: cfg.TPM, tpmBurst: cfg.BurstTokens, quantum: cfg.Quantum}
	l.reset(now)
	return l
}

func (l *limiter) reset(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpm = newBucket(l.rpmLimit, l.rpmBurst, l.quantum, now)
	l.tpm = newBucket(l.tpmLimit, l.tpmBurst, l.quantum, now)
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
	l.rpm.at(now)
	l.tpm.at(now)
	return l.stateLocked()
}

// take charges one request of tokens at now if both budgets allow it. When
// both refuse, the verdict names the one with the longer wait so that
// retrying after it succeeds.
func (l *limiter) take(now time.Time, tokens int64) verdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpm.at(now)
	l.tpm.at(now)
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
		l.rpm.take(1)
	}
	if l.tpm.on() {
		l.tpm.take(float64(tokens))
	}
	return verdict{ok: true, state: l.stateLocked()}
}
