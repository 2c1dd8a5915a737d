package ratelimit

import (
	"errors"
	"math"
	"sync"
	"testing"
	"time"
)

// Issue 11 §2: with only RPM/TPM set the burst is one second of budget
// (a provider may enforce a per-minute limit per second), and a fresh budget
// starts at half of it until the provider's readings confirm the rest.
func TestDefaultBurstIsOneSecondAndStartsSlowly(t *testing.T) {
	l, _ := newDefaultBurstTest(t, Budget{RPM: 6000, TPM: 1_200_000})
	s := usage(t, l)
	if s.RequestCapacity != 100 || s.TokenCapacity != 20_000 {
		t.Fatalf("capacity %d requests, %d tokens; want one second: 100, 20000", s.RequestCapacity, s.TokenCapacity)
	}
	if s.Requests != 50 || s.Tokens != 10_000 {
		t.Fatalf("a fresh budget holds %v requests, %v tokens; want half its capacity (slow start)", s.Requests, s.Tokens)
	}
	if s.RPM != 6000 || s.TPM != 1_200_000 || s.Factor != 1 {
		t.Fatalf("limits %d/%d factor %v, want the configured ones and 1", s.RPM, s.TPM, s.Factor)
	}
}

// The default burst never makes a job "above capacity": a cost above one
// second of budget waits for a full bucket and leaves it in debt. Only a
// cost above a minute's budget is refused.
func TestDefaultBurstServesLargerCosts(t *testing.T) {
	l, clk := newDefaultBurstTest(t, Budget{TPM: 600}) // 10 tokens/s: capacity 10
	r := mustReserve(t, l, Cost{0, 100})
	if r.OK || r.Wait != 500*time.Millisecond {
		t.Fatalf("100 tokens from a half-full bucket of 10 = %+v, want a wait of 0.5 s until it is full", r)
	}
	clk.Advance(r.Wait)
	if r := mustReserve(t, l, Cost{0, 100}); !r.OK {
		t.Fatalf("100 tokens from a full bucket of 10 refused: %+v", r)
	}
	if s := usage(t, l); s.Tokens != -90 {
		t.Fatalf("level %v, want -90 (debt)", s.Tokens)
	}
	if r := mustReserve(t, l, Cost{0, 1}); r.OK || r.Wait != 9100*time.Millisecond {
		t.Fatalf("after the debt, 1 token = %+v, want a wait of 9.1 s", r)
	}
	if _, err := l.Reserve(ctx, model, Cost{0, 601}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a cost above a minute's budget: err = %v, want ErrTooLarge", err)
	}
}

// The provider's remaining-* readings, carried to now, raise a slow start
// and grow the default burst to what the provider's bucket provably holds.
func TestReconcileAdoptsProviderRoom(t *testing.T) {
	l, clk := newDefaultBurstTest(t, Budget{RPM: 6000, TPM: 1_200_000}) // 1 s: 100 requests, 20000 tokens
	r := mustReserve(t, l, Cost{1, 1000})
	mustReserve(t, l, Cost{1, 1000})   // charged after r, so not in r's reading
	clk.Advance(50 * time.Millisecond) // 5 requests and 1000 tokens of refill since r
	sv := NoServerView()
	// The provider's bucket is two seconds: 200 requests, 40000 tokens.
	sv.RemainingRequests, sv.RemainingTokens = 199, 39_000
	if err := l.Reconcile(ctx, r, -1, sv); err != nil {
		t.Fatal(err)
	}
	s := usage(t, l)
	if s.RequestCapacity != 200 || s.TokenCapacity != 40_000 {
		t.Fatalf("capacity %d/%d, want the simProvider's proven 200/40000", s.RequestCapacity, s.TokenCapacity)
	}
	// 199 - 1 (later) + 5 (refill) = 203, capped at 200; 39000 - 1000 + 1000.
	if s.Requests != 200 || s.Tokens != 39_000 {
		t.Fatalf("level %v/%v, want the reading less the later charge plus the refill: 200 (capped)/39000", s.Requests, s.Tokens)
	}
	// A lower reading is adopted the same way.
	sv.RemainingRequests, sv.RemainingTokens = 10, 2000
	if err := l.Reconcile(ctx, r, -1, sv); err != nil {
		t.Fatal(err)
	}
	if s := usage(t, l); s.Requests != 10-1+5 || s.Tokens != 2000-1000+1000 {
		t.Fatalf("after a lower reading: %v/%v, want 14/2000", s.Requests, s.Tokens)
	}
}

// Issue 11 §2: a provider limit (x-ratelimit-limit-*) below the configured
// one is used by the fleet and reported once.
func TestProviderLimitBelowConfigured(t *testing.T) {
	var mu sync.Mutex
	var seen []ProviderLimit
	l, _ := newDefaultBurstTest(t, Budget{RPM: 6000, TPM: 1_200_000}, func(c *Config) {
		c.OnProviderLimit = func(p ProviderLimit) { mu.Lock(); seen = append(seen, p); mu.Unlock() }
	})
	r := mustReserve(t, l, Cost{1, 100})
	sv := NoServerView()
	sv.LimitRequests, sv.LimitTokens = 3000, 2_000_000 // requests lower, tokens higher
	for range 3 {
		if err := l.Reconcile(ctx, r, -1, sv); err != nil {
			t.Fatal(err)
		}
	}
	s := usage(t, l)
	if s.RPM != 3000 || s.TPM != 1_200_000 {
		t.Fatalf("limits in force %d/%d, want 3000 (simProvider's) / 1200000 (configured)", s.RPM, s.TPM)
	}
	if s.RequestCapacity != 50 {
		t.Fatalf("request capacity %d, want one second of the simProvider's 3000 RPM", s.RequestCapacity)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != (ProviderLimit{Model: model, Kind: "requests", Configured: 6000, Provider: 3000}) {
		t.Fatalf("reported %+v, want one report of the lower request limit", seen)
	}
}

// simProvider is a simulated simProvider bucket that charges each request ratio
// times the fleet's estimate.
type simProvider struct {
	level, capacity, perMS, ratio float64
	at                            time.Time
}

func (p *simProvider) call(now time.Time, estimate int64) (ok bool, remaining int64) {
	p.level = math.Min(p.capacity, p.level+p.perMS*float64(now.Sub(p.at).Milliseconds()))
	p.at = now
	charge := math.Ceil(float64(estimate) * p.ratio)
	if p.level < charge {
		return false, int64(p.level)
	}
	p.level -= charge
	return true, int64(p.level)
}

// Issue 15: a provider whose accounting differs from the estimate (here by
// ratio) is learned from consecutive x-ratelimit-remaining-tokens readings:
// the factor converges, within its bounds (a correction downwards only by
// FactorDownTrust of it), and the 429s stop within the first simulated
// minute.
func TestCalibrationLearnsTheProvidersAccounting(t *testing.T) {
	for _, tc := range []struct {
		ratio, want float64
	}{{1.25, 1.25}, {0.8, 1 - 0.2*FactorDownTrust}, {3, FactorMax}} {
		t.Run("", func(t *testing.T) {
			const tpm = 60_000 // 1000 tokens/s
			l, clk := newDefaultBurstTest(t, Budget{TPM: tpm})
			p := &simProvider{level: 2000, capacity: 2000, perMS: tpm / 60_000.0, ratio: tc.ratio, at: clk.Now()}
			refusedLate := 0
			start := clk.Now()
			for i := 0; clk.Now().Sub(start) < 2*time.Minute; i++ {
				cost := int64(60 + 40*(i%3))
				res := mustReserve(t, l, Cost{1, cost})
				if !res.OK {
					clk.Advance(res.Wait)
					continue
				}
				sv := NoServerView()
				sv.LimitTokens = tpm
				ok, rem := p.call(clk.Now(), cost)
				sv.RemainingTokens = rem
				if !ok {
					if clk.Now().Sub(start) > time.Minute {
						refusedLate++
					}
					res = res.Refused()
				}
				if err := l.Reconcile(ctx, res, -1, sv); err != nil {
					t.Fatal(err)
				}
				clk.Advance(20 * time.Millisecond)
			}
			f := usage(t, l).Factor
			if math.Abs(f-tc.want) > 0.05*tc.want {
				t.Errorf("factor %.3f, want %.3f", f, tc.want)
			}
			if tc.ratio <= FactorMax && refusedLate > 0 {
				t.Errorf("%d requests refused after the first minute, want 0", refusedLate)
			}
			if r := mustReserve(t, l, Cost{0, 0}); r.OK && r.Charged != 0 {
				t.Errorf("a zero cost charged %d", r.Charged)
			}
		})
	}
}

// The factor is charged: a reservation takes cost × factor, rounded up.
func TestCalibratedCharge(t *testing.T) {
	l, clk := newDefaultBurstTest(t, Budget{TPM: 60_000})
	p := &simProvider{level: 2000, capacity: 2000, perMS: 1, ratio: 1.5, at: clk.Now()}
	for clk.Now().Sub(p.at) < time.Minute && usage(t, l).Factor < 1.45 {
		res := mustReserve(t, l, Cost{1, 100})
		if !res.OK {
			clk.Advance(res.Wait)
			continue
		}
		_, rem := p.call(clk.Now(), 100)
		sv := NoServerView()
		sv.RemainingTokens = rem
		if err := l.Reconcile(ctx, res, -1, sv); err != nil {
			t.Fatal(err)
		}
		clk.Advance(50 * time.Millisecond)
	}
	f := usage(t, l).Factor
	clk.Advance(5 * time.Second)
	r := mustReserve(t, l, Cost{1, 100})
	if !r.OK || r.Charged != int64(math.Ceil(100*f)) {
		t.Fatalf("reservation %+v with factor %v, want charged ceil(100 × factor)", r, f)
	}
}

// A calibration factor above the provider's (here 1.2 against a provider
// that charges exactly the estimate, as load noise once taught a fleet)
// must not prove a larger provider bucket than there is: the bucket's
// proof counts the request's estimate, not its scaled charge. Proving 2000
// + 20 % of a call here let readings of a capped bucket into the
// calibration, which raised the factor further.
func TestFalseFactorProvesNoLargerBucket(t *testing.T) {
	const tpm, capacity = 60_000, 2000
	l, clk := newDefaultBurstTest(t, Budget{TPM: tpm})
	c := newClient()
	defer c.Close()
	// The factor is stored in the budget's hash (budget.lua's f).
	mustReserve(t, l, Cost{0, 1})
	if err := c.HSet(ctx, l.Key(model), "f", "1.2").Err(); err != nil {
		t.Fatal(err)
	}
	if f := usage(t, l).Factor; math.Abs(f-1.2) > 1e-9 {
		t.Fatalf("factor %v after setting it, want 1.2", f)
	}
	p := &simProvider{level: capacity, capacity: capacity, perMS: tpm / 60_000.0, ratio: 1, at: clk.Now()}
	for i := range 50 {
		res := mustReserve(t, l, Cost{1, 100})
		if !res.OK {
			clk.Advance(res.Wait)
			continue
		}
		if i == 0 && res.Charged != 120 {
			t.Fatalf("charged %d for an estimate of 100 at factor 1.2, want 120", res.Charged)
		}
		sv := NoServerView()
		_, sv.RemainingTokens = p.call(clk.Now(), 100)
		if err := l.Reconcile(ctx, res, -1, sv); err != nil {
			t.Fatal(err)
		}
		if tc := usage(t, l).TokenCapacity; tc > capacity {
			t.Fatalf("proven token capacity %d, above the provider's %d", tc, capacity)
		}
		clk.Advance(100 * time.Millisecond)
	}
	if tc := usage(t, l).TokenCapacity; tc != capacity {
		t.Errorf("proven token capacity %d, want the provider's %d", tc, capacity)
	}
}

// A token proof an older llmq stored (field kt, which could count the
// calibrated charge and overstate the bucket) is not carried over: the
// proof lives in kp now.
func TestOlderTokenProofIsNotCarriedOver(t *testing.T) {
	l, _ := newDefaultBurstTest(t, Budget{TPM: 60_000})
	c := newClient()
	defer c.Close()
	mustReserve(t, l, Cost{0, 1})
	before := usage(t, l).TokenCapacity
	if err := c.HSet(ctx, l.Key(model), "kt", 50_000*60_000).Err(); err != nil {
		t.Fatal(err)
	}
	mustReserve(t, l, Cost{0, 1})
	if got := usage(t, l).TokenCapacity; got != before {
		t.Fatalf("token capacity %d after an older proof of 50000 tokens, want %d (not carried over)", got, before)
	}
}
