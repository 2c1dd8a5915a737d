package ratelimit

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// starve drives a saturated budget on the fake clock for 10 s: a small
// request of 5 tokens every 10 ms (500 tokens/s against a refill of 100/s)
// and one big request of 100 tokens (the whole bucket) that comes back
// exactly when told. It returns when the big one was served (-1 = never).
func starve(t *testing.T, ticket string) time.Duration {
	l, clk := newTest(t, Budget{TPM: 6000, BurstTokens: 100})
	big := Cost{1, 100}
	bb, _ := l.Budget(model)
	start := clk.Now()
	next := start // when the big request asks next
	smallServed := 0
	for clk.Now().Sub(start) < 10*time.Second {
		if r := mustReserve(t, l, Cost{1, 5}); r.OK {
			smallServed++
		}
		if !clk.Now().Before(next) {
			r, err := l.reserve(ctx, model, bb, big, ticket, DefaultMaxWait)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK {
				return clk.Now().Sub(start)
			}
			next = clk.Now().Add(r.Wait)
		}
		clk.Advance(10 * time.Millisecond)
	}
	if smallServed == 0 {
		t.Fatal("no small request was served")
	}
	return -1
}

func TestFairnessBigRequestGetsThrough(t *testing.T) {
	// Without a claim the big request starves: this is what the test guards.
	if at := starve(t, ""); at != -1 {
		t.Fatalf("without a claim the big request was served at %s; the load does not starve it, fix the test", at)
	}
	// With a claim, smaller requests leave its tokens alone: the bucket
	// refills 100 tokens in 1 s.
	at := starve(t, "big-1")
	if at < 0 || at > 1100*time.Millisecond {
		t.Fatalf("with a claim the big request was served at %s, want about 1s", at)
	}
}

func TestFairnessSmallRequestsKeepFlowing(t *testing.T) {
	// Small requests that fit beside the claimed amount are still served.
	l, clk := newTest(t, Budget{TPM: 6000, BurstTokens: 100})
	mustReserve(t, l, Cost{1, 40}) // 60 left
	bb, _ := l.Budget(model)
	r, err := l.reserve(ctx, model, bb, Cost{1, 70}, "big", DefaultMaxWait)
	if err != nil || r.OK || r.Wait != 100*time.Millisecond {
		t.Fatalf("big = %+v, %v; want a 100ms wait", r, err)
	}
	if s := usage(t, l); s.ClaimTokens != 70 || !s.ClaimUntil.Equal(clk.Now().Add(100*time.Millisecond+ClaimGrace)) {
		t.Fatalf("claim = %d tokens until %s", s.ClaimTokens, s.ClaimUntil)
	}
	// 60 held, 70 claimed: a 5-token request must wait for 70+5 = 15 more.
	if r := mustReserve(t, l, Cost{1, 5}); r.OK || r.Wait != 150*time.Millisecond {
		t.Fatalf("small behind the claim = %+v, want a 150ms wait", r)
	}
	clk.Advance(100 * time.Millisecond)
	if r, _ := l.reserve(ctx, model, bb, Cost{1, 70}, "big", DefaultMaxWait); !r.OK {
		t.Fatalf("big on time = %+v, want OK", r)
	}
	if s := usage(t, l); s.ClaimTokens != 0 || !s.ClaimUntil.IsZero() {
		t.Fatalf("claim not cleared after being served: %+v", s)
	}
	clk.Advance(50 * time.Millisecond) // 5 tokens
	if r := mustReserve(t, l, Cost{1, 5}); !r.OK {
		t.Fatalf("small after the big one = %+v, want OK", r)
	}
}

func TestFairnessClaimExpires(t *testing.T) {
	l, clk := newTest(t, Budget{TPM: 6000, BurstTokens: 100})
	mustReserve(t, l, Cost{1, 100})
	bb, _ := l.Budget(model)
	r, _ := l.reserve(ctx, model, bb, Cost{1, 100}, "crashed", DefaultMaxWait)
	if r.Wait != time.Second {
		t.Fatalf("big = %+v, want a 1s wait", r)
	}
	// The claimant never returns: others stay behind it until the claim
	// expires, one grace period after it was due.
	clk.Advance(time.Second + ClaimGrace - time.Millisecond)
	if r := mustReserve(t, l, Cost{1, 5}); r.OK {
		t.Fatal("small served while the claim lives")
	}
	clk.Advance(time.Millisecond)
	if r := mustReserve(t, l, Cost{1, 5}); !r.OK {
		t.Fatalf("small after the claim expired = %+v, want OK", r)
	}
	// A wait longer than the claimant may block records no claim.
	mustReserve(t, l, Cost{1, 95})
	if r, _ := l.reserve(ctx, model, bb, Cost{1, 100}, "patient", 500*time.Millisecond); r.OK || r.Wait != time.Second {
		t.Fatalf("big = %+v, want a 1s wait", r)
	}
	if s := usage(t, l); s.ClaimTokens != 0 {
		t.Fatalf("claim recorded for a wait beyond claimMax: %+v", s)
	}
}

// TestFleetNeverExceedsBudget stands two processes (two Limiters on two
// Redis clients) of 8 goroutines each against one budget with the real
// clock, and checks that no 1 s window ever holds more grants than the
// burst plus one second of refill.
func TestFleetNeverExceedsBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 2 s")
	}
	const (
		rpm   = 600 // 10 per second
		burst = 10
		run   = 2 * time.Second
	)
	_, prefix := testRedis(t)
	cfg := Config{Prefix: prefix, Budgets: map[string]Budget{model: {RPM: rpm, BurstRequests: burst, TPM: 600_000}}}
	var (
		mu     sync.Mutex
		grants []time.Time
	)
	rctx, cancel := context.WithTimeout(ctx, run)
	defer cancel()
	var wg sync.WaitGroup
	for p := range 2 {
		rdb := newClient()
		defer rdb.Close()
		l, err := New(rdb, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for g := range 8 {
			wg.Go(func() {
				for rctx.Err() == nil {
					r, err := l.Acquire(rctx, model, Cost{1, int64(100 + p*10 + g)})
					var we *WaitError
					switch {
					case err == nil:
						mu.Lock()
						grants = append(grants, r.At)
						mu.Unlock()
					case errors.As(err, &we):
						_ = sleep(rctx, time.Until(we.Until))
					case errors.Is(err, context.DeadlineExceeded):
						return
					default:
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	slices.SortFunc(grants, func(a, b time.Time) int { return a.Compare(b) })
	limit := burst + rpm/60 // burst + rate × 1 s
	worst := 0
	for i := range grants {
		j := i
		for j < len(grants) && !grants[j].After(grants[i].Add(time.Second)) {
			j++
		}
		worst = max(worst, j-i)
	}
	t.Logf("%d grants in %s, busiest 1s window %d (limit %d)", len(grants), run, worst, limit)
	if worst > limit {
		t.Fatalf("a 1s window held %d grants, budget allows %d", worst, limit)
	}
	if len(grants) <= burst {
		t.Fatalf("only %d grants in %s: the budget never refilled", len(grants), run)
	}
}

// BenchmarkReserve measures one Reserve round trip and reports it as a
// multiple of a PING on the same client, measured in the same run.
func BenchmarkReserve(b *testing.B) {
	l, _ := newTest(b, Budget{RPM: 1 << 36, TPM: 1 << 37})
	n := 0
	for b.Loop() {
		if r, err := l.Reserve(ctx, model, Cost{1, 500}); err != nil || !r.OK {
			b.Fatal(r, err)
		}
		n++
	}
	reserve := b.Elapsed() / time.Duration(n)
	start := time.Now()
	for range n {
		if err := l.rdb.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
	ping := time.Since(start) / time.Duration(n)
	b.ReportMetric(float64(ping.Nanoseconds()), "ping_ns")
	b.ReportMetric(float64(reserve)/float64(ping), "x_ping")
}
