package ratelimit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var ctx = context.Background()

func TestNewValidates(t *testing.T) {
	rdb := newClient()
	defer rdb.Close()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" = valid
	}{
		{"defaults", Config{}, ""},
		{"negative rpm", Config{Budgets: map[string]Budget{"m": {RPM: -1}}}, `budgets["m"].rpm`},
		{"negative tpm", Config{Budgets: map[string]Budget{"m": {TPM: -1}}}, `budgets["m"].tpm`},
		{"negative burst", Config{Budgets: map[string]Budget{"m": {TPM: 10, BurstTokens: -1}}}, `budgets["m"].burst`},
		{"burst without limit", Config{Budgets: map[string]Budget{"m": {RPM: 1, BurstTokens: 5}}}, `budgets["m"].burst is 5 but tpm is 0`},
		{"burst_requests without limit", Config{Budgets: map[string]Budget{"m": {TPM: 1, BurstRequests: 5}}}, `burst_requests`},
		{"too big", Config{Budgets: map[string]Budget{"m": {TPM: 1 << 50}}}, `exceeds`},
		{"empty model", Config{Budgets: map[string]Budget{"": {}}}, `empty model`},
		{"negative max wait", Config{MaxWait: -time.Second}, `max_wait`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(rdb, tc.cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if l.cfg.Prefix != "llmq" || l.cfg.Account != "default" || l.cfg.MaxWait != 5*time.Second || l.cfg.RefundUnused {
					t.Errorf("defaults = %+v", l.cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want error containing %q", err, tc.want)
			}
		})
	}
	if _, err := New(nil, Config{}); err == nil {
		t.Error("New(nil) succeeded")
	}
}

func TestKeyAndTTL(t *testing.T) {
	l, _ := newTest(t, Budget{RPM: 60, TPM: 600}) // fills in 60 s
	mustReserve(t, l, Cost{1, 10})
	key := l.cfg.Prefix + ":budget:{default:" + model + "}"
	if l.Key(model) != key {
		t.Fatalf("Key = %q, want %q", l.Key(model), key)
	}
	ttl, err := l.rdb.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 100*time.Second || ttl > 121*time.Second {
		t.Errorf("TTL = %s, want about 2 × 60 s", ttl)
	}
}

func TestRequestBound(t *testing.T) {
	l, clk := newTest(t, Budget{RPM: 60}) // 1 request/s, no token limit
	for i := range 60 {
		if r := mustReserve(t, l, Cost{1, 1_000_000}); !r.OK {
			t.Fatalf("request %d refused with wait %s", i, r.Wait)
		}
	}
	r := mustReserve(t, l, Cost{1, 0})
	if r.OK || r.Wait != time.Second {
		t.Fatalf("61st = %+v, want wait 1s", r)
	}
	clk.Advance(time.Second)
	if r := mustReserve(t, l, Cost{1, 0}); !r.OK {
		t.Fatalf("after 1s = %+v, want OK", r)
	}
}

func TestTokenBound(t *testing.T) {
	l, clk := newTest(t, Budget{TPM: 6000}) // 100 tokens/s, no request limit
	for i := range 6 {
		if r := mustReserve(t, l, Cost{1000, 1000}); !r.OK {
			t.Fatalf("reservation %d refused", i)
		}
	}
	r := mustReserve(t, l, Cost{1, 1000})
	if r.OK || r.Wait != 10*time.Second {
		t.Fatalf("7th = %+v, want wait 10s", r)
	}
	clk.Advance(5 * time.Second)
	if r := mustReserve(t, l, Cost{1, 500}); !r.OK {
		t.Fatalf("500 tokens after 5s = %+v, want OK", r)
	}
}

func TestBothOrNeither(t *testing.T) {
	l, _ := newTest(t, Budget{RPM: 10, TPM: 1000})
	if r := mustReserve(t, l, Cost{1, 900}); !r.OK {
		t.Fatal("first refused")
	}
	// Tokens do not fit: the request must not be consumed.
	if r := mustReserve(t, l, Cost{1, 500}); r.OK {
		t.Fatal("500 tokens granted with 100 left")
	}
	if s := usage(t, l); s.Requests != 9 || s.Tokens != 100 {
		t.Fatalf("after token refusal: requests %v tokens %v, want 9 and 100", s.Requests, s.Tokens)
	}
	// Requests do not fit: the tokens must not be consumed.
	if r := mustReserve(t, l, Cost{10, 50}); r.OK {
		t.Fatal("10 requests granted with 9 left")
	}
	if s := usage(t, l); s.Requests != 9 || s.Tokens != 100 {
		t.Fatalf("after request refusal: requests %v tokens %v, want 9 and 100", s.Requests, s.Tokens)
	}
}

func TestWaitIsExact(t *testing.T) {
	for _, tc := range []struct {
		name        string
		b           Budget
		drain, cost Cost
	}{
		{"tokens, rate divides", Budget{TPM: 6000}, Cost{0, 6000}, Cost{0, 1}},
		{"tokens, rate does not divide", Budget{TPM: 7, BurstTokens: 5}, Cost{0, 4}, Cost{0, 3}},
		{"requests, odd rate", Budget{RPM: 13}, Cost{13, 0}, Cost{2, 0}},
		{"large tpm", Budget{TPM: 150_000_000, BurstTokens: 90_001}, Cost{0, 90_001}, Cost{0, 33_333}},
		{"both, tokens longer", Budget{RPM: 600, TPM: 60}, Cost{600, 60}, Cost{1, 7}},
		{"both, requests longer", Budget{RPM: 6, TPM: 60_000}, Cost{6, 60_000}, Cost{1, 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, clk := newTest(t, tc.b)
			if r := mustReserve(t, l, tc.drain); !r.OK {
				t.Fatalf("drain refused: %+v", r)
			}
			r := mustReserve(t, l, tc.cost)
			if r.OK || r.Wait <= time.Millisecond {
				t.Fatalf("after drain = %+v, want a wait", r)
			}
			clk.Advance(r.Wait - time.Millisecond)
			if early := mustReserve(t, l, tc.cost); early.OK || early.Wait != time.Millisecond {
				t.Fatalf("1ms early = %+v, want refused with 1ms left", early)
			}
			clk.Advance(time.Millisecond)
			if onTime := mustReserve(t, l, tc.cost); !onTime.OK {
				t.Fatalf("after the wait %s = %+v, want OK", r.Wait, onTime)
			}
		})
	}
}

func TestRefillOverInjectedTime(t *testing.T) {
	l, clk := newTest(t, Budget{RPM: 600, TPM: 60_000})
	mustReserve(t, l, Cost{600, 60_000})
	if s := usage(t, l); s.Requests != 0 || s.Tokens != 0 {
		t.Fatalf("drained = %+v", s)
	}
	clk.Advance(30 * time.Second)
	if s := usage(t, l); s.Requests != 300 || s.Tokens != 30_000 {
		t.Fatalf("after 30s: %v requests %v tokens, want 300 and 30000", s.Requests, s.Tokens)
	}
	clk.Advance(time.Hour)
	if s := usage(t, l); s.Requests != 600 || s.Tokens != 60_000 {
		t.Fatalf("after an hour: %v requests %v tokens, want capacity", s.Requests, s.Tokens)
	}
	// A process whose clock lags adds nothing until it passes the latest
	// time the budget has seen.
	mustReserve(t, l, Cost{600, 60_000})
	clk.Advance(-10 * time.Second)
	if r := mustReserve(t, l, Cost{1, 0}); r.OK || r.Wait != 10*time.Second+100*time.Millisecond {
		t.Fatalf("lagging 10s = %+v, want a wait of 10.1s from its own clock", r)
	}
	clk.Advance(9 * time.Second)
	if s := usage(t, l); s.Requests != 0 {
		t.Fatalf("lagging 1s: %v requests, want 0", s.Requests)
	}
	clk.Advance(2 * time.Second)
	if s := usage(t, l); s.Requests != 10 {
		t.Fatalf("1s past the latest time: %v requests, want 10", s.Requests)
	}
}

func TestBurstBelowOneMinute(t *testing.T) {
	l, clk := newTest(t, Budget{RPM: 600, BurstRequests: 10, TPM: 60_000, BurstTokens: 1000})
	for i := range 10 {
		if r := mustReserve(t, l, Cost{1, 100}); !r.OK {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	if r := mustReserve(t, l, Cost{1, 0}); r.OK || r.Wait != 100*time.Millisecond {
		t.Fatalf("11th = %+v, want wait 100ms", r)
	}
	clk.Advance(time.Minute)
	s := usage(t, l)
	if s.Requests != 10 || s.Tokens != 1000 || s.RequestCapacity != 10 || s.TokenCapacity != 1000 {
		t.Fatalf("after a minute idle: %+v, want the burst, not a minute's budget", s)
	}
}

func TestReconcileRefund(t *testing.T) {
	t.Run("off by default", func(t *testing.T) {
		l, _ := newTest(t, Budget{TPM: 1000})
		r := mustReserve(t, l, Cost{1, 1000})
		if err := l.Reconcile(ctx, r, 300, NoServerView()); err != nil {
			t.Fatal(err)
		}
		if s := usage(t, l); s.Tokens != 0 {
			t.Fatalf("tokens = %v, want 0 (no refund)", s.Tokens)
		}
	})
	t.Run("on", func(t *testing.T) {
		l, clk := newTest(t, Budget{TPM: 1000}, func(c *Config) { c.RefundUnused = true })
		r := mustReserve(t, l, Cost{1, 1000})
		if err := l.Reconcile(ctx, r, 300, NoServerView()); err != nil {
			t.Fatal(err)
		}
		if s := usage(t, l); s.Tokens != 700 {
			t.Fatalf("tokens = %v, want 700", s.Tokens)
		}
		// Unknown usage refunds nothing; a refund never exceeds capacity.
		if err := l.Reconcile(ctx, r, -1, NoServerView()); err != nil {
			t.Fatal(err)
		}
		if s := usage(t, l); s.Tokens != 700 {
			t.Fatalf("tokens after unknown usage = %v, want 700", s.Tokens)
		}
		clk.Advance(30 * time.Second)
		if err := l.Reconcile(ctx, r, 0, NoServerView()); err != nil {
			t.Fatal(err)
		}
		if s := usage(t, l); s.Tokens != 1000 {
			t.Fatalf("tokens = %v, want capped at 1000", s.Tokens)
		}
	})
}

func TestReconcileAdoptsLowerServerView(t *testing.T) {
	l, _ := newTest(t, Budget{RPM: 100, TPM: 10_000})
	mustReserve(t, l, Cost{1, 1000}) // 99 requests, 9000 tokens left
	// A reading without its place among the fleet's charges (a 429's).
	r := Reservation{Model: model}
	sv := NoServerView()
	sv.RemainingRequests, sv.RemainingTokens = 500, 20_000 // more than ours: ignored
	if err := l.Reconcile(ctx, r, -1, sv); err != nil {
		t.Fatal(err)
	}
	if s := usage(t, l); s.Requests != 99 || s.Tokens != 9000 {
		t.Fatalf("after a laxer server: %v/%v, want 99/9000 (never raised)", s.Requests, s.Tokens)
	}
	sv.RemainingRequests, sv.RemainingTokens = 40, -1
	if err := l.Reconcile(ctx, r, -1, sv); err != nil {
		t.Fatal(err)
	}
	if s := usage(t, l); s.Requests != 40 || s.Tokens != 9000 {
		t.Fatalf("after stricter requests: %v/%v, want 40/9000", s.Requests, s.Tokens)
	}
	sv.RemainingRequests, sv.RemainingTokens = -1, 1500
	if err := l.Reconcile(ctx, r, -1, sv); err != nil {
		t.Fatal(err)
	}
	if s := usage(t, l); s.Requests != 40 || s.Tokens != 1500 {
		t.Fatalf("after stricter tokens: %v/%v, want 40/1500", s.Requests, s.Tokens)
	}
	// Another process sees the adopted level.
	other := otherProcess(t, l)
	if r := mustReserve(t, other, Cost{1, 2000}); r.OK || r.Wait != 3*time.Second {
		t.Fatalf("other process asking 2000 tokens = %+v, want wait 3s", r)
	}
}

// otherProcess returns a Limiter like l on its own Redis client, standing in
// for another worker process.
func otherProcess(t *testing.T, l *Limiter) *Limiter {
	t.Helper()
	rdb := newClient()
	t.Cleanup(func() { _ = rdb.Close() })
	other, err := New(rdb, l.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return other
}

func TestCooldown(t *testing.T) {
	l, clk := newTest(t, Budget{RPM: 600, TPM: 60_000})
	other := otherProcess(t, l)
	until := clk.Now().Add(3 * time.Second)
	if err := l.Cooldown(ctx, model, until); err != nil {
		t.Fatal(err)
	}
	// A shorter cooldown does not shorten it.
	if err := other.Cooldown(ctx, model, clk.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Limiter{l, other} {
		if r := mustReserve(t, x, Cost{1, 1}); r.OK || r.Wait != 3*time.Second {
			t.Fatalf("during cooldown = %+v, want wait 3s", r)
		}
	}
	if s := usage(t, l); !s.CooldownUntil.Equal(until) {
		t.Fatalf("CooldownUntil = %s, want %s", s.CooldownUntil, until)
	}
	clk.Advance(3*time.Second - time.Millisecond)
	if r := mustReserve(t, other, Cost{1, 1}); r.OK || r.Wait != time.Millisecond {
		t.Fatalf("1ms before the end = %+v, want wait 1ms", r)
	}
	clk.Advance(time.Millisecond)
	if r := mustReserve(t, other, Cost{1, 1}); !r.OK {
		t.Fatalf("at the end = %+v, want OK", r)
	}
	if s := usage(t, l); !s.CooldownUntil.IsZero() {
		t.Fatalf("CooldownUntil = %s after it ended, want zero", s.CooldownUntil)
	}
}

func TestCooldownLongerThanRefill(t *testing.T) {
	l, clk := newTest(t, Budget{TPM: 600}) // 10 tokens/s
	mustReserve(t, l, Cost{1, 600})
	if err := l.Cooldown(ctx, model, clk.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Needs 100 tokens = 10 s; the cooldown is shorter, so the wait is 10 s.
	if r := mustReserve(t, l, Cost{1, 100}); r.Wait != 10*time.Second {
		t.Fatalf("wait = %s, want 10s", r.Wait)
	}
	// Needs 10 tokens = 1 s; the cooldown is longer, so it wins.
	if r := mustReserve(t, l, Cost{1, 10}); r.Wait != 2*time.Second {
		t.Fatalf("wait = %s, want 2s", r.Wait)
	}
}

func TestTooLarge(t *testing.T) {
	l, _ := newTest(t, Budget{RPM: 10, TPM: 60_000, BurstTokens: 4000})
	_, err := l.Reserve(ctx, model, Cost{1, 4001})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), model) || !strings.Contains(err.Error(), "4000") {
		t.Fatalf("Reserve = %v, want ErrTooLarge naming the model and capacity", err)
	}
	start := time.Now()
	if _, err := l.Acquire(ctx, model, Cost{11, 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Acquire = %v, want ErrTooLarge", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("Acquire waited on a cost that can never fit")
	}
	if r := mustReserve(t, l, Cost{1, 4000}); !r.OK {
		t.Fatal("a cost of exactly the capacity was refused")
	}
}

func TestNoBudget(t *testing.T) {
	l, _ := newTest(t, Budget{RPM: 10})
	_, err := l.Reserve(ctx, "other-model", Cost{1, 1})
	var nb *NoBudgetError
	if !errors.Is(err, ErrNoBudget) || !errors.As(err, &nb) || nb.Model != "other-model" {
		t.Fatalf("Reserve = %v, want a *NoBudgetError naming other-model (ErrNoBudget)", err)
	}
	if strings.Contains(err.Error(), "budgets.") {
		t.Errorf("library error %q gives configuration-file advice (the CLI adds it)", err)
	}
	if _, err := l.Usage(ctx, "other-model"); !errors.As(err, &nb) || nb.Model != "other-model" {
		t.Errorf("Usage = %v, want a *NoBudgetError", err)
	}
	l2, _ := newTest(t, Budget{}, func(c *Config) { c.Budgets = map[string]Budget{DefaultModel: {RPM: 1, BurstRequests: 1}} })
	if r, err := l2.Reserve(ctx, "other-model", Cost{1, 1}); err != nil || !r.OK {
		t.Fatalf("Reserve with a default budget = %+v, %v", r, err)
	}
	if r, _ := l2.Reserve(ctx, "other-model", Cost{1, 1}); r.OK {
		t.Fatal("the default budget of 1 rpm granted twice")
	}
	if _, err := l2.Reserve(ctx, model, Cost{-1, 0}); err == nil {
		t.Fatal("negative cost accepted")
	}
}

func TestUnlimited(t *testing.T) {
	l, _ := newTest(t, Budget{})
	for range 100 {
		if r := mustReserve(t, l, Cost{1000, 1 << 40}); !r.OK {
			t.Fatalf("unlimited budget refused: %+v", r)
		}
	}
}

func TestAcquireWaitError(t *testing.T) {
	l, clk := newTest(t, Budget{RPM: 6}) // one request per 10 s
	mustReserve(t, l, Cost{6, 0})
	start := time.Now()
	r, err := l.Acquire(ctx, model, Cost{1, 0})
	var we *WaitError
	if !errors.As(err, &we) {
		t.Fatalf("Acquire = %v, want *WaitError", err)
	}
	if r.OK || we.Wait != 10*time.Second || !we.Until.Equal(clk.Now().Add(10*time.Second)) || we.Model != model {
		t.Fatalf("WaitError = %+v, want wait 10s until now+10s", we)
	}
	if time.Since(start) > time.Second {
		t.Fatal("Acquire blocked on a wait longer than MaxWait")
	}
	// A wait within MaxWait but past the context's deadline also reschedules.
	clk.Advance(8 * time.Second)
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := l.Acquire(dctx, model, Cost{1, 0}); !errors.As(err, &we) || we.Wait != 2*time.Second {
		t.Fatalf("Acquire past the deadline = %v, want *WaitError of 2s", err)
	}
}

func TestAcquireSleepsTheWait(t *testing.T) {
	// Real clock: 600 rpm with a burst of 1 is one request per 100 ms.
	rdb, prefix := testRedis(t)
	l, err := New(rdb, Config{Prefix: prefix, Budgets: map[string]Budget{model: {RPM: 600, BurstRequests: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := l.Acquire(ctx, model, Cost{1, 0})
	if err != nil {
		t.Fatal(err)
	}
	second, err := l.Acquire(ctx, model, Cost{1, 0})
	if err != nil || !second.OK {
		t.Fatalf("second Acquire = %+v, %v", second, err)
	}
	if gap := second.At.Sub(first.At); gap < 99*time.Millisecond {
		t.Fatalf("second granted %s after the first, want ≥ 100ms", gap)
	}
}

func TestAcquireNeverBypassesRedis(t *testing.T) {
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer dead.Close()
	l, err := New(dead, Config{Budgets: map[string]Budget{model: {RPM: 600}}})
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
	defer cancel()
	r, err := l.Acquire(tctx, model, Cost{1, 1})
	if r.OK || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire without Redis = %+v, %v; want no reservation and the context's error", r, err)
	}
	if !strings.Contains(err.Error(), "Redis failing") {
		t.Errorf("error %q does not say Redis failed", err)
	}
	if _, err := l.Reserve(ctx, model, Cost{1, 1}); err == nil {
		t.Fatal("Reserve without Redis succeeded")
	}
}

// An unlimited budget has no level to correct: reconciling it costs no
// Redis round trip and leaves nothing behind, whatever the server says.
func TestReconcileUnlimitedTouchesNothing(t *testing.T) {
	l, _ := newTest(t, Budget{})
	ctx := context.Background()
	r := Reservation{OK: true, Model: model, Cost: Cost{Requests: 1, Tokens: 500}}
	if err := l.Reconcile(ctx, r, 10, ServerView{RemainingRequests: 0, RemainingTokens: 0, ResetRequests: -1, ResetTokens: -1}); err != nil {
		t.Fatal(err)
	}
	if n, err := l.rdb.Exists(ctx, l.Key(model)).Result(); err != nil || n != 0 {
		t.Fatalf("budget key exists=%d (%v) after reconciling an unlimited budget", n, err)
	}
}
