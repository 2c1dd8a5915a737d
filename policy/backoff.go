package policy

import (
	"math"
	"math/rand/v2"
	"time"
)

// Defaults of a Policy, from DESIGN.md.
const (
	DefaultBase          = time.Second
	DefaultCap           = 60 * time.Second
	DefaultRetryAfterCap = 120 * time.Second
	DefaultAttempts      = 5
)

// Policy holds the retry settings the failure table uses. Zero fields take
// the defaults, so Policy{} behaves like DefaultPolicy(). A Policy is a
// value: safe to copy and to use from many goroutines.
type Policy struct {
	// Base is the backoff before the first retry's jitter (default 1s).
	Base time.Duration
	// Cap bounds the computed backoff (default 60s).
	Cap time.Duration
	// RetryAfterCap bounds a server's Retry-After hint (default 120s), so a
	// misbehaving server cannot park jobs for hours.
	RetryAfterCap time.Duration
	// Attempts is how many upstream calls a job gets (default 5). The
	// worker enforces it; Classify does not count.
	Attempts int
}

// DefaultPolicy returns the policy with DESIGN.md's defaults: base 1s, cap
// 60s, Retry-After cap 120s, 5 attempts.
func DefaultPolicy() Policy {
	return Policy{Base: DefaultBase, Cap: DefaultCap, RetryAfterCap: DefaultRetryAfterCap, Attempts: DefaultAttempts}
}

// WithDefaults returns p with every zero field set to its default.
func (p Policy) WithDefaults() Policy {
	if p.Base <= 0 {
		p.Base = DefaultBase
	}
	if p.Cap <= 0 {
		p.Cap = DefaultCap
	}
	if p.RetryAfterCap <= 0 {
		p.RetryAfterCap = DefaultRetryAfterCap
	}
	if p.Attempts <= 0 {
		p.Attempts = DefaultAttempts
	}
	return p
}

// Ceiling returns the largest backoff for attempt: min(Cap, Base*2^attempt),
// computed without overflow for any attempt (negative counts as 0).
func (p Policy) Ceiling(attempt int) time.Duration {
	p = p.WithDefaults()
	attempt = max(attempt, 0)
	// Base*2^a > Cap  <=>  Base > floor(Cap / 2^a), for integers.
	if attempt >= 63 || p.Base > p.Cap>>attempt {
		return p.Cap
	}
	return p.Base << attempt
}

// Backoff returns a full-jitter delay for attempt (0 for the first retry):
// uniform in [0, min(Cap, Base*2^attempt)]. rnd supplies the randomness (a
// seeded *rand.Rand makes it reproducible; it is not safe for concurrent
// use, so give each goroutine its own); nil uses math/rand/v2's global
// generator, which is.
func (p Policy) Backoff(attempt int, rnd *rand.Rand) time.Duration {
	n := int64(p.Ceiling(attempt))
	if n < math.MaxInt64 {
		n++ // inclusive upper bound
	}
	if rnd == nil {
		return time.Duration(rand.Int64N(n))
	}
	return time.Duration(rnd.Int64N(n))
}

// RetryDelay returns how long to wait before the next try after verdict v
// on attempt: the server's Retry-After (v.RetryAfter, capped by
// RetryAfterCap) when it gave one, else Backoff(attempt, rnd).
func (p Policy) RetryDelay(attempt int, v Verdict, rnd *rand.Rand) time.Duration {
	p = p.WithDefaults()
	if v.RetryAfter > 0 {
		return min(v.RetryAfter, p.RetryAfterCap)
	}
	return p.Backoff(attempt, rnd)
}
