package ratelimit

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestTransitHeadroom(t *testing.T) {
	withTransit := func(d time.Duration) func(*Config) { return func(c *Config) { c.Transit = d } }
	cases := []struct {
		name     string
		b        Budget
		req, tok int64
	}{
		// 100 req/s and 20 tokens/ms: 100 ms keeps 10 requests and 2000 tokens back.
		{"rate × transit", Budget{RPM: 6000, BurstRequests: 20, TPM: 1_200_000, BurstTokens: 10_000}, 10, 8000},
		{"room for one request", Budget{RPM: 6000, BurstRequests: 1}, 1, 0},
		{"at most half the tokens", Budget{TPM: 600_000, BurstTokens: 1000}, 0, 500},
		{"one minute's burst barely changes", Budget{RPM: 500, TPM: 200_000}, 499, 199_666},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newTest(t, tc.b, withTransit(100*time.Millisecond))
			if s := usage(t, l); s.RequestCapacity != tc.req || s.TokenCapacity != tc.tok || int64(s.Requests) != tc.req || int64(s.Tokens) != tc.tok {
				t.Errorf("snapshot %+v, want capacity and level %d requests, %d tokens", s, tc.req, tc.tok)
			}
		})
	}
	// A cost above the capacity left is refused at once, not waited for.
	l, _ := newTest(t, Budget{TPM: 600_000, BurstTokens: 1000}, withTransit(100*time.Millisecond))
	if _, err := l.Reserve(ctx, model, Cost{1, 501}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("501 tokens of 500 left = %v, want ErrTooLarge", err)
	}
	if _, err := New(l.rdb, Config{Transit: -time.Second}); err == nil {
		t.Error("a negative transit must be refused")
	}
}

// provider is a provider's own request bucket: capped, charged on arrival.
type provider struct {
	level, capacity, perMS float64
	last                   time.Time
}

func (p *provider) take(at time.Time) bool {
	if at.After(p.last) {
		p.level = math.Min(p.capacity, p.level+float64(at.Sub(p.last))/float64(time.Millisecond)*p.perMS)
		p.last = at
	}
	if p.level+1e-9 < 1 {
		return false
	}
	p.level--
	return true
}

// reorder drains a full budget of 20 requests (100/s) whose calls take
// 12 ms to reach the provider, then sends each request that fits at once
// on a fast connection (0 ms): the fast ones overtake the slow ones. It
// returns how many calls the provider refused.
func reorder(t *testing.T, transit time.Duration) int {
	l, clk := newTest(t, Budget{RPM: 6000, BurstRequests: 20}, func(c *Config) { c.Transit = transit })
	start := clk.Now()
	p := &provider{level: 20, capacity: 20, perMS: 0.1, last: start}
	slow := 0
	for mustReserve(t, l, Cost{1, 0}).OK {
		slow++
	}
	refused := 0
	for range 12 {
		clk.Advance(time.Millisecond)
		for mustReserve(t, l, Cost{1, 0}).OK {
			if !p.take(clk.Now()) {
				refused++
			}
		}
	}
	for range slow {
		if !p.take(start.Add(12 * time.Millisecond)) {
			refused++
		}
	}
	return refused
}

// While the provider's bucket is full it banks no refill, but ours does
// for calls still in transit: calls that overtake them then find the
// provider emptier than the budget said. Transit headroom covers it.
func TestTransitHeadroomCoversOvertaking(t *testing.T) {
	if n := reorder(t, 0); n == 0 {
		t.Fatal("without headroom the provider refused nothing: the scenario does not reproduce the overtaking, fix the test")
	}
	if n := reorder(t, 20*time.Millisecond); n != 0 {
		t.Errorf("with 20 ms of transit headroom for a 12 ms spread the provider refused %d calls", n)
	}
}
