package policy

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	p := DefaultPolicy()
	rnd := rand.New(rand.NewPCG(1, 2))
	for attempt := 0; attempt < 10; attempt++ {
		ceil := min(p.Cap, p.Base*time.Duration(1<<attempt))
		if got := p.Ceiling(attempt); got != ceil {
			t.Fatalf("Ceiling(%d) = %v, want %v", attempt, got, ceil)
		}
		seen := map[time.Duration]bool{}
		var lo, hi time.Duration = math.MaxInt64, 0
		for range 2000 {
			d := p.Backoff(attempt, rnd)
			if d < 0 || d > ceil {
				t.Fatalf("Backoff(%d) = %v outside [0, %v]", attempt, d, ceil)
			}
			seen[d] = true
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range, not a constant.
		if len(seen) < 1000 || lo > ceil/10 || hi < ceil*9/10 {
			t.Fatalf("attempt %d: %d distinct values in [%v, %v], want spread over [0, %v]", attempt, len(seen), lo, hi, ceil)
		}
	}
	if d := p.Backoff(3, nil); d < 0 || d > 8*time.Second {
		t.Fatalf("global generator: %v", d)
	}
}

func TestBackoffOverflow(t *testing.T) {
	p := Policy{Base: time.Second, Cap: time.Duration(math.MaxInt64)}
	for _, attempt := range []int{30, 33, 34, 62, 63, 64, 1000, math.MaxInt} {
		c := p.Ceiling(attempt)
		if c <= 0 || c < p.Ceiling(attempt-1) {
			t.Fatalf("Ceiling(%d) = %v: overflowed or shrank", attempt, c)
		}
		if d := p.Backoff(attempt, rand.New(rand.NewPCG(3, 4))); d < 0 {
			t.Fatalf("Backoff(%d) = %v", attempt, d)
		}
	}
	d := DefaultPolicy()
	if d.Ceiling(1000) != d.Cap || d.Ceiling(-5) != d.Base || d.Ceiling(6) != d.Cap || d.Ceiling(5) != 32*time.Second {
		t.Fatalf("ceilings: %v %v %v %v", d.Ceiling(1000), d.Ceiling(-5), d.Ceiling(6), d.Ceiling(5))
	}
	if (Policy{}).Ceiling(2) != 4*time.Second || (Policy{}.WithDefaults()) != DefaultPolicy() {
		t.Fatalf("zero Policy must behave like DefaultPolicy")
	}
}

func TestRetryDelay(t *testing.T) {
	p := DefaultPolicy()
	rnd := rand.New(rand.NewPCG(5, 6))
	if d := p.RetryDelay(0, Verdict{RetryAfter: 2 * time.Second}, rnd); d != 2*time.Second {
		t.Fatalf("server hint must win: %v", d)
	}
	if d := p.RetryDelay(0, Verdict{RetryAfter: time.Hour}, rnd); d != p.RetryAfterCap {
		t.Fatalf("server hint must be capped: %v", d)
	}
	for range 100 {
		if d := p.RetryDelay(4, Verdict{}, rnd); d < 0 || d > 16*time.Second {
			t.Fatalf("no hint: backoff expected, got %v", d)
		}
	}
}
