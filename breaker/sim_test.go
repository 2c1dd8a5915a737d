package breaker_test

import (
	"container/heap"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/llmqtest"
)

// traffic is a simulated fleet's load on one model: calls arrive at rate
// per second, spread round-robin over processes (each a Breaker on its own
// connection), each takes a latency drawn from [minLat, maxLat) and fails
// with probability failP(t) (t: time since the start, at its answer). With
// hangP, a call that arrives at t hangs with probability hangP(t) and
// fails after timeout, recorded as the worker records a timeout (with
// Permit.Started). Time is the manual clock: a simulated minute takes as
// long as its Redis calls.
type traffic struct {
	rate           float64
	processes      int
	minLat, maxLat time.Duration
	failP          func(t time.Duration) float64
	hangP          func(t time.Duration) float64 // nil: no call hangs
	timeout        time.Duration
	hangsInARow    bool                  // hung calls carry no Permit.Started: counted in a row, as before it
	cfg            func(*breaker.Config) // nil: defaults
	outage         time.Duration         // failedBefore counts failures answered from here on
}

// simResult is what a simulation saw.
type simResult struct {
	calls, failures int           // calls allowed, failures recorded
	opens           int           // closed->open transitions
	failedBefore    int           // failures answered from traffic.outage on, before the first open
	firstOpen       time.Duration // -1: never
	scriptCalls     int64         // Redis commands sent by the breakers
}

// inflight is a call between Allow and Record.
type inflight struct {
	done time.Duration
	b    *breaker.Breaker
	p    breaker.Permit
	hung bool // it times out: a failure with p.Started set
}

type callHeap []inflight

func (h callHeap) Len() int           { return len(h) }
func (h callHeap) Less(i, j int) bool { return h[i].done < h[j].done }
func (h callHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *callHeap) Push(x any)        { *h = append(*h, x.(inflight)) }
func (h *callHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// countCmds counts the commands a client sends.
type countCmds struct{ n *atomic.Int64 }

func (countCmds) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c countCmds) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c countCmds) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// simulate runs tr for d against real Redis with the real scripts.
func simulate(t testing.TB, env *llmqtest.Env, seed uint64, tr traffic, d time.Duration) simResult {
	t.Helper()
	clk := newClock()
	start := clk.Now()
	rng := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	res := simResult{firstOpen: -1}
	var cmds atomic.Int64
	model := fmt.Sprintf("sim-%d-%s", seed, llmqtest.Suffix()) // fresh state per run
	var bs []*breaker.Breaker
	for range max(tr.processes, 1) {
		rdb := env.NewClient()
		rdb.AddHook(countCmds{&cmds})
		t.Cleanup(func() { rdb.Close() })
		cfg := breaker.Config{Prefix: env.Prefix, Now: clk.Now, OnTransition: func(_ string, from, to breaker.State) {
			if from == breaker.Closed && to == breaker.Open {
				res.opens++
				if res.firstOpen < 0 {
					res.firstOpen = clk.Now().Sub(start)
				}
			}
		}}
		if tr.cfg != nil {
			tr.cfg(&cfg)
		}
		b, err := breaker.New(rdb, cfg)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	ctx := context.Background()
	var fly callHeap
	interval := time.Duration(float64(time.Second) / tr.rate)
	next := time.Duration(0)
	for n := 0; ; {
		// The next event: an answer, or an arrival.
		if fly.Len() > 0 && fly[0].done <= next {
			c := heap.Pop(&fly).(inflight)
			clk.Set(start.Add(c.done))
			o := breaker.Success
			if c.hung || rng.Float64() < tr.failP(c.done) {
				o = breaker.Failure
				res.failures++
				if res.firstOpen < 0 && c.done >= tr.outage {
					res.failedBefore++
				}
			}
			if err := c.b.Record(ctx, c.p, o); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if next >= d {
			break
		}
		clk.Set(start.Add(next))
		b := bs[n%len(bs)]
		p, err := b.Allow(ctx, model)
		if err != nil {
			t.Fatal(err)
		}
		if p.Allowed {
			res.calls++
			lat := tr.minLat + time.Duration(rng.Int64N(int64(tr.maxLat-tr.minLat)+1))
			hung := tr.hangP != nil && rng.Float64() < tr.hangP(next)
			if hung {
				lat = tr.timeout
				if !tr.hangsInARow {
					p.Started = clk.Now()
				}
			}
			heap.Push(&fly, inflight{done: next + lat, b: b, p: p, hung: hung})
		}
		n++
		next = time.Duration(n) * interval
	}
	res.scriptCalls = cmds.Load()
	return res
}

func constant(p float64) func(time.Duration) float64 { return func(time.Duration) float64 { return p } }

// Background noise never opens the breaker: 3 % (the target) and
// 8 % (the chaos drill's 500s, resets and hangs) of calls failing at
// 50 calls/s, 4 processes, answers taking 0.2-3 s.
func TestNoiseNeverOpens(t *testing.T) {
	env := llmqtest.Redis(t)
	for i, p := range []float64{0.03, 0.08} {
		r := simulate(t, env, uint64(i+1), traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 3 * time.Second,
			failP: constant(p)}, 2*time.Minute)
		if r.opens != 0 {
			t.Errorf("%.0f %% noise: %+v, want no opening", p*100, r)
		}
		if r.failures < int(p*float64(r.calls)/2) {
			t.Errorf("%.0f %% noise: only %d failures in %d calls: the simulation is off", p*100, r.failures, r.calls)
		}
		t.Logf("%.0f %% noise at 50/s for 2 min: %d calls, %d failures, %d opens, %.2f Redis commands per call",
			p*100, r.calls, r.failures, r.opens, float64(r.scriptCalls)/float64(r.calls))
	}
}

// A full outage opens the breaker at its 5th failed call, at 50 calls/s
// after a healthy minute and at one call every 30 s; a partial outage
// (60 % failing) opens it within seconds.
func TestOutageOpensWithinFailures(t *testing.T) {
	env := llmqtest.Redis(t)
	outageAt := func(at time.Duration, p float64) func(time.Duration) float64 {
		return func(t time.Duration) float64 {
			if t >= at {
				return p
			}
			return 0.01
		}
	}
	busy := simulate(t, env, 11, traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 2 * time.Second,
		failP: outageAt(time.Minute, 1), outage: time.Minute}, 70*time.Second)
	if busy.firstOpen < time.Minute || busy.failedBefore > breaker.DefaultFailures {
		t.Errorf("outage after a healthy minute at 50/s: %+v, want open within %d failed calls of the outage", busy, breaker.DefaultFailures)
	}
	quiet := simulate(t, env, 12, traffic{rate: 1.0 / 30, processes: 2, minLat: time.Second, maxLat: 5 * time.Second,
		failP: outageAt(0, 1)}, 10*time.Minute)
	if quiet.failedBefore != breaker.DefaultFailures {
		t.Errorf("outage at one call per 30 s: %+v, want open at exactly the %dth failure", quiet, breaker.DefaultFailures)
	}
	partial := simulate(t, env, 13, traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 2 * time.Second,
		failP: outageAt(time.Minute, 0.6)}, 80*time.Second)
	if partial.firstOpen < 0 || partial.firstOpen > time.Minute+10*time.Second {
		t.Errorf("60 %% failing after a healthy minute: %+v, want open within 10 s", partial)
	}
	t.Logf("full outage at 50/s: open after %d failed calls (%.2f s); one call per 30 s: after %d; 60 %% failing at 50/s: after %.2f s",
		busy.failedBefore, (busy.firstOpen - time.Minute).Seconds(), quiet.failedBefore, (partial.firstOpen - time.Minute).Seconds())
}

// Calls that hang and time out together while the model answers others
// (a 200 ms stall: every call arriving in it hangs until a 1 s timeout,
// among 1 % hangs and 3 % fast failures) do not open the breaker: they
// count in the window, not in a row. Counted in a row, as before
// Permit.Started, the same traffic opens it. A model that hangs for
// everyone (every call from the first minute on, 15 s timeouts) still
// opens it at the 5th timeout: its last answer is long past by then.
func TestHangsAmongAnswersNeverOpenAHangingModelDoes(t *testing.T) {
	env := llmqtest.Redis(t)
	stall := func(t time.Duration) float64 {
		if t >= 30*time.Second && t < 30*time.Second+200*time.Millisecond {
			return 1
		}
		return 0.01
	}
	noisy := traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 3 * time.Second,
		failP: constant(0.03), hangP: stall, timeout: time.Second}
	r := simulate(t, env, 21, noisy, time.Minute)
	if r.opens != 0 {
		t.Errorf("a 200 ms stall among answers: %+v, want no opening", r)
	}
	// The same traffic with every timeout counted in a row.
	before := noisy
	before.hangsInARow = true
	if b := simulate(t, env, 21, before, time.Minute); b.opens == 0 {
		t.Errorf("the stall with timeouts counted in a row: %+v, want it to open (else this test shows nothing)", b)
	}
	hanging := simulate(t, env, 22, traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 2 * time.Second,
		failP: constant(0), timeout: 15 * time.Second, outage: 75 * time.Second,
		hangP: func(t time.Duration) float64 {
			if t >= time.Minute {
				return 1
			}
			return 0
		}}, 80*time.Second)
	if hanging.firstOpen < 0 || hanging.failedBefore > breaker.DefaultFailures {
		t.Errorf("a model hanging for everyone from 60 s, 15 s timeouts: %+v, want open within %d timeouts", hanging, breaker.DefaultFailures)
	}
	t.Logf("200 ms stall among answers: %d calls, %d failures, %d opens; hanging model: open %.2f s after the first timeouts, after %d of them",
		r.calls, r.failures, r.opens, (hanging.firstOpen - 75*time.Second).Seconds(), hanging.failedBefore)
}

// A success costs no Redis command unless this process saw failures in a
// row to end; a failure and the success after it cost one each.
func TestSuccessPathCost(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	var cmds atomic.Int64
	rdb := env.NewClient()
	rdb.AddHook(countCmds{&cmds})
	t.Cleanup(func() { rdb.Close() })
	b, err := breaker.New(rdb, breaker.Config{Prefix: env.Prefix, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	const m = "m"
	ok := func() { record(t, b, allow(t, b, m), breaker.Success) }
	ok() // loads the scripts (EVALSHA, then EVAL on NOSCRIPT)
	fail(t, b, m)
	ok()
	cmds.Store(0)
	for range 10 {
		ok()
	}
	if n := cmds.Load(); n != 10 {
		t.Fatalf("10 closed calls that succeeded sent %d commands, want 10 (one Allow each)", n)
	}
	fail(t, b, m)
	ok()
	ok()
	if n := cmds.Load(); n != 10+2+3 {
		t.Fatalf("a failure then 2 successes sent %d commands, want 5 (3 Allows, the failure, one success ending the streak)", n-10)
	}
	if st := status(t, b, m); st.Streak != 0 || st.Failures != 2 || st.Calls != 16 {
		t.Fatalf("%+v, want no streak, 2 failures in 16 calls", st)
	}
}

// TestSweep prints opens under noise and failed calls before opening under
// outages for a grid of thresholds: the measurements the defaults were
// chosen from. LLMQ_BREAKER_SWEEP=1 runs it (about a minute).
func TestSweep(t *testing.T) {
	if os.Getenv("LLMQ_BREAKER_SWEEP") == "" {
		t.Skip("set LLMQ_BREAKER_SWEEP=1 to print the threshold sweep")
	}
	env := llmqtest.Redis(t)
	type grid struct{ failures, rate, minCalls int }
	for _, g := range []grid{{3, 50, 20}, {4, 50, 20}, {5, 25, 20}, {5, 50, 20}, {5, 50, 10}, {5, 75, 20}} {
		cfg := func(c *breaker.Config) { c.Failures, c.FailureRate, c.MinCalls = g.failures, g.rate, g.minCalls }
		line := fmt.Sprintf("failures %d rate %d%% min %d:", g.failures, g.rate, g.minCalls)
		for i, p := range []float64{0.03, 0.08, 0.15} {
			r := simulate(t, env, uint64(100+i), traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 3 * time.Second,
				failP: constant(p), cfg: cfg}, 5*time.Minute)
			line += fmt.Sprintf("  noise %.0f%%: %d opens/5min", p*100, r.opens)
		}
		for i, p := range []float64{0.3, 0.6, 1} {
			r := simulate(t, env, uint64(200+i), traffic{rate: 50, processes: 4, minLat: 200 * time.Millisecond, maxLat: 2 * time.Second,
				failP: func(t time.Duration) float64 {
					if t < time.Minute {
						return 0.01
					}
					return p
				}, cfg: cfg, outage: time.Minute}, 2*time.Minute)
			line += fmt.Sprintf("  outage %.0f%%: open after %.1fs, %d failed calls", p*100, (r.firstOpen - time.Minute).Seconds(), r.failedBefore)
		}
		t.Log(line)
	}
}
