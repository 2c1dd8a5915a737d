package upstream

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimit is what the server said about its rate limits in the
// x-ratelimit-* headers of one response. A count of -1 and a duration of -1
// mean the header was absent or unreadable.
type RateLimit struct {
	// LimitRequests and LimitTokens are x-ratelimit-limit-requests/-tokens:
	// the budget per window.
	LimitRequests, LimitTokens int64
	// RemainingRequests and RemainingTokens are
	// x-ratelimit-remaining-requests/-tokens: what is left of it.
	RemainingRequests, RemainingTokens int64
	// ResetRequests and ResetTokens are x-ratelimit-reset-requests/-tokens:
	// how long until the budget is full again.
	ResetRequests, ResetTokens time.Duration
}

// Rate-limit and retry header names, as OpenAI and Azure send them.
const (
	HeaderLimitRequests     = "x-ratelimit-limit-requests"
	HeaderLimitTokens       = "x-ratelimit-limit-tokens"
	HeaderRemainingRequests = "x-ratelimit-remaining-requests"
	HeaderRemainingTokens   = "x-ratelimit-remaining-tokens"
	HeaderResetRequests     = "x-ratelimit-reset-requests"
	HeaderResetTokens       = "x-ratelimit-reset-tokens"
	HeaderRetryAfterMS      = "retry-after-ms"
	HeaderRetryAfter        = "Retry-After"
)

// NoRateLimit is a RateLimit with every field absent.
func NoRateLimit() RateLimit {
	return RateLimit{-1, -1, -1, -1, -1, -1}
}

// Known reports whether any field was present.
func (r RateLimit) Known() bool {
	return r != NoRateLimit()
}

// ParseRateLimit reads the x-ratelimit-* headers of h. Counts are integers
// (a float is truncated); resets are Go durations such as "1s", "6m0s",
// "20ms" or "1m30.5s", or bare numbers taken as seconds. Absent, negative or
// unreadable values are -1. It never fails.
func ParseRateLimit(h http.Header) RateLimit {
	return RateLimit{
		LimitRequests:     parseCount(h.Get(HeaderLimitRequests)),
		LimitTokens:       parseCount(h.Get(HeaderLimitTokens)),
		RemainingRequests: parseCount(h.Get(HeaderRemainingRequests)),
		RemainingTokens:   parseCount(h.Get(HeaderRemainingTokens)),
		ResetRequests:     parseReset(h.Get(HeaderResetRequests)),
		ResetTokens:       parseReset(h.Get(HeaderResetTokens)),
	}
}

func parseCount(s string) int64 {
	s = strings.TrimSpace(s)
	if s == "" {
		return -1
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return -1
		}
		return n
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f >= math.MaxInt64 {
		return -1
	}
	return int64(f)
}

func parseReset(s string) time.Duration {
	s = strings.TrimSpace(s)
	if s == "" {
		return -1
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return -1
		}
		return d
	}
	d, ok := seconds(s, time.Second)
	if !ok {
		return -1
	}
	return d
}

// seconds parses s as a non-negative decimal number of units. Values too
// large for a Duration are clamped to the largest one; NaN, infinities,
// negatives and garbage are not ok.
func seconds(s string, unit time.Duration) (time.Duration, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
		return 0, false
	}
	v := f * float64(unit)
	if v >= math.MaxInt64 {
		return time.Duration(math.MaxInt64), true
	}
	return time.Duration(v), true
}

// ParseRetryAfter returns how long the server asked the client to wait.
// retry-after-ms (milliseconds, may be fractional) wins over Retry-After
// (seconds, integer or fractional, or an HTTP date, measured from now; a date
// in the past means "now" and yields 0, true). Absent, negative or
// unreadable values are not present: 0, false. Huge values are clamped to
// the largest Duration; callers cap them.
func ParseRetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if v := h.Get(HeaderRetryAfterMS); v != "" {
		if d, ok := seconds(v, time.Millisecond); ok {
			return d, true
		}
	}
	v := strings.TrimSpace(h.Get(HeaderRetryAfter))
	if v == "" {
		return 0, false
	}
	if d, ok := seconds(v, time.Second); ok {
		return d, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}
