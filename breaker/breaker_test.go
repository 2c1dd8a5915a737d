package breaker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/llmqtest"
)

// clock is the manual clock the tests drive.
type clock = llmqtest.Clock

func newClock() *clock { return llmqtest.NewClock(time.UnixMilli(1_700_000_000_000)) }

// transitions records OnTransition calls.
type transitions struct {
	mu  sync.Mutex
	log []string
}

func (tr *transitions) add(model string, from, to breaker.State) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.log = append(tr.log, fmt.Sprintf("%s:%s->%s", model, from, to))
}

func (tr *transitions) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return strings.Join(tr.log, " ")
}

// newBreaker returns a breaker on its own Redis connection (standing in for
// a separate process).
func newBreaker(t *testing.T, env *llmqtest.Env, clk *clock, mod func(*breaker.Config)) *breaker.Breaker {
	t.Helper()
	rdb := env.NewClient()
	t.Cleanup(func() { rdb.Close() })
	cfg := breaker.Config{Prefix: env.Prefix, Now: clk.Now}
	if mod != nil {
		mod(&cfg)
	}
	b, err := breaker.New(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func allow(t *testing.T, b *breaker.Breaker, model string) breaker.Permit {
	t.Helper()
	p, err := b.Allow(context.Background(), model)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func record(t *testing.T, b *breaker.Breaker, p breaker.Permit, o breaker.Outcome) {
	t.Helper()
	if err := b.Record(context.Background(), p, o); err != nil {
		t.Fatal(err)
	}
}

func fail(t *testing.T, b *breaker.Breaker, model string) {
	t.Helper()
	p := allow(t, b, model)
	if !p.Allowed {
		t.Fatalf("a call to %s was refused (%+v) before the breaker should open", model, p)
	}
	record(t, b, p, breaker.Failure)
}

func status(t *testing.T, b *breaker.Breaker, model string) breaker.Status {
	t.Helper()
	st, err := b.Status(context.Background(), model)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTransitions(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	tr := &transitions{}
	b := newBreaker(t, env, clk, func(c *breaker.Config) { c.OnTransition = tr.add })
	const m = "gpt-4o"
	for i := 0; i < 4; i++ {
		fail(t, b, m)
		clk.Advance(time.Second)
	}
	if st := status(t, b, m); st.State != breaker.Closed || st.Failures != 4 {
		t.Fatalf("after 4 failures: %+v, want closed with 4 failures", st)
	}
	fail(t, b, m) // the 5th within 60 s
	opened := clk.Now()
	p := allow(t, b, m)
	if p.Allowed || p.State != breaker.Open || !p.RetryAt.Equal(opened.Add(30*time.Second)) {
		t.Fatalf("after the 5th failure: %+v, want refused, open until %v", p, opened.Add(30*time.Second))
	}
	clk.Advance(30*time.Second - time.Millisecond)
	if p := allow(t, b, m); p.Allowed {
		t.Fatalf("allowed 1 ms before the open interval ended: %+v", p)
	}
	clk.Advance(time.Millisecond)
	probe := allow(t, b, m)
	if !probe.Allowed || !probe.Probe || probe.State != breaker.HalfOpen {
		t.Fatalf("at the end of the open interval: %+v, want the probe", probe)
	}
	if p := allow(t, b, m); p.Allowed || p.State != breaker.HalfOpen || !p.RetryAt.Equal(clk.Now().Add(breaker.DefaultProbeLease)) {
		t.Fatalf("second caller while the probe is in flight: %+v, want refused until the lease ends", p)
	}
	record(t, b, probe, breaker.Failure) // reopen
	if st := status(t, b, m); st.State != breaker.Open || !st.OpenUntil.Equal(clk.Now().Add(30*time.Second)) || st.Trips != 1 {
		t.Fatalf("after the probe failed: %+v, want open for another 30 s", st)
	}
	clk.Advance(30 * time.Second)
	if st := status(t, b, m); st.State != breaker.HalfOpen || !st.ProbeUntil.IsZero() {
		t.Fatalf("open interval over, no probe yet: %+v, want half_open", st)
	}
	probe = allow(t, b, m)
	record(t, b, probe, breaker.Success)
	if p := allow(t, b, m); !p.Allowed || p.Probe || p.State != breaker.Closed {
		t.Fatalf("after the probe succeeded: %+v, want closed", p)
	}
	// Closing starts a fresh window: 4 more failures do not reopen it.
	for i := 0; i < 4; i++ {
		fail(t, b, m)
	}
	if st := status(t, b, m); st.State != breaker.Closed || st.Failures != 4 {
		t.Fatalf("4 failures after closing: %+v", st)
	}
	want := "gpt-4o:closed->open gpt-4o:open->half_open gpt-4o:half_open->open gpt-4o:open->half_open gpt-4o:half_open->closed"
	if got := tr.String(); got != want {
		t.Errorf("transitions\n got %s\nwant %s", got, want)
	}
}

// The failure rate is counted over a rolling window: calls leave it a
// bucket (1 s) at a time, exactly Window after they were allowed, and the
// rate opens the breaker only with MinCalls calls in the window.
func TestRollingWindowFailureRate(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	// Failures in a row are kept apart by successes: only the rate can
	// open it.
	b := newBreaker(t, env, clk, func(c *breaker.Config) { c.Failures = 1000; c.MinCalls = 10 })
	const m = "m"
	ok := func() { record(t, b, allow(t, b, m), breaker.Success) }
	// t = 0: 10 successes.
	for range 10 {
		ok()
	}
	// t = 30: 9 failures, each followed by a success: 28 calls, 9 failed.
	clk.Advance(30 * time.Second)
	for range 9 {
		fail(t, b, m)
		ok()
	}
	if st := status(t, b, m); st.State != breaker.Closed || st.Calls != 28 || st.Failures != 9 || st.Streak != 0 {
		t.Fatalf("at t=30: %+v, want closed, 28 calls, 9 failures, none in a row", st)
	}
	// t = 59.999: the first bucket is still in the window.
	clk.Advance(30*time.Second - time.Millisecond)
	if st := status(t, b, m); st.Calls != 28 {
		t.Fatalf("at t=59.999: %+v, want 28 calls in the window", st)
	}
	// t = 60: the 10 successes of t = 0 left; one more failure makes 10 of
	// 19 calls: over 50 %.
	clk.Advance(time.Millisecond)
	if st := status(t, b, m); st.Calls != 18 || st.Failures != 9 {
		t.Fatalf("at t=60: %+v, want 18 calls and 9 failures", st)
	}
	fail(t, b, m)
	if st := status(t, b, m); st.State != breaker.Open || st.Reason != "rate" {
		t.Fatalf("10 of 19 calls failed: %+v, want open for the rate", st)
	}

	// Below MinCalls the rate never opens it: 9 of 9 failed, apart.
	b2 := newBreaker(t, env, clk, func(c *breaker.Config) { c.Failures = 1000; c.MinCalls = 10 })
	for range 9 {
		p := allow(t, b2, "m2")
		record(t, b2, p, breaker.Failure)
	}
	if st := status(t, b2, "m2"); st.State != breaker.Closed || st.Calls != 9 {
		t.Fatalf("9 calls, all failed, MinCalls 10: %+v, want closed", st)
	}
}

// The consecutive rule covers low traffic, where the window never holds
// MinCalls calls: 5 failures in a row open it however far apart; a success
// between them starts the count again.
func TestConsecutiveFailuresAtLowTraffic(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	const m = "m"
	// One call every 40 s: 4 failures, a success, 4 failures: closed.
	for _, ok := range []bool{false, false, false, false, true, false, false, false, false} {
		p := allow(t, b, m)
		if !p.Allowed {
			t.Fatalf("refused before the 5th failure in a row: %+v", p)
		}
		o := breaker.Failure
		if ok {
			o = breaker.Success
		}
		record(t, b, p, o)
		clk.Advance(40 * time.Second)
	}
	if st := status(t, b, m); st.State != breaker.Closed || st.Streak != 4 {
		t.Fatalf("4 failures, a success, 4 failures: %+v, want closed with 4 in a row", st)
	}
	fail(t, b, m)
	if st := status(t, b, m); st.State != breaker.Open || st.Reason != "consecutive" {
		t.Fatalf("5th failure in a row, 40 s apart: %+v, want open", st)
	}
}

// A success in a process that has not seen the fleet's failures (its view
// of the streak is 0, so Record skips the round trip) still ends the
// streak when batched with SuccessIn: four failures in process B, A's
// success, one more failure in B is a streak of 1, not 5.
func TestSuccessInEndsAnotherProcesssStreak(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	a, b := newBreaker(t, env, clk, nil), newBreaker(t, env, clk, nil)
	const m = "m"
	pa := allow(t, a, m) // A's view: no failures yet
	for range 4 {
		fail(t, b, m)
	}
	pipe := env.Client.Pipeline()
	done := a.SuccessIn(context.Background(), pipe, pa)
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	done()
	fail(t, b, m)
	if st := status(t, b, m); st.State != breaker.Closed || st.Streak != 1 {
		t.Fatalf("4 failures, another process's success, 1 failure: %+v, want closed with 1 in a row", st)
	}
	// Record alone skips that success (A's view is 0): the same sequence
	// opens the breaker, which is why the worker batches SuccessIn.
	c, d := newBreaker(t, env, clk, nil), newBreaker(t, env, clk, nil)
	const m2 = "m2"
	pc := allow(t, c, m2)
	for range 4 {
		fail(t, d, m2)
	}
	record(t, c, pc, breaker.Success)
	fail(t, d, m2)
	if st := status(t, d, m2); st.State != breaker.Open {
		t.Fatalf("Record's skipped success: %+v, want open (the cheap path cannot see the fleet's streak)", st)
	}
}

// A timed-out call that began before its process last saw the model
// answer, within the last bucket (a hang timing out while other calls
// succeed), counts in the window but not as one more in a row: five such
// failures leave the breaker closed. Once the model has not answered for a
// bucket, timeouts count again (a model that hangs for everyone), and
// failures without a start (fast ones: the worker sets Started for
// timeouts only) always count.
func TestTimeoutsOfCallsOlderThanAnAnswerAreNoStreak(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	const m = "m"
	for i := range 5 {
		hung := allow(t, b, m)
		hung.Started = clk.Now()
		clk.Advance(100 * time.Millisecond)
		record(t, b, allow(t, b, m), breaker.Success) // another call answered meanwhile
		clk.Advance(900 * time.Millisecond)
		record(t, b, hung, breaker.Failure)
		if st := status(t, b, m); st.State != breaker.Closed || st.Streak != 0 || st.Failures != int64(i+1) {
			t.Fatalf("timeout %d of a call older than an answer: %+v, want closed, 0 in a row, %d failures in the window", i+1, st, i+1)
		}
	}
	// The model stops answering: the calls begun before its last answer
	// time out more than a bucket after it, and count.
	var hung []breaker.Permit
	for range 5 {
		p := allow(t, b, m)
		p.Started = clk.Now()
		hung = append(hung, p)
	}
	record(t, b, allow(t, b, m), breaker.Success)
	clk.Advance(1001 * time.Millisecond)
	for _, p := range hung {
		record(t, b, p, breaker.Failure)
	}
	if st := status(t, b, m); st.State != breaker.Open {
		t.Fatalf("5 timeouts more than a bucket after the last answer: %+v, want open", st)
	}
	// Fast failures (no start) count in a row right after an answer.
	const m2 = "m2"
	record(t, b, allow(t, b, m2), breaker.Success)
	for range 5 {
		fail(t, b, m2)
	}
	if st := status(t, b, m2); st.State != breaker.Open {
		t.Fatalf("5 failures without a start time just after an answer: %+v, want open", st)
	}
}

// What the worker records as Success (4xx of the job, 429, any answer) and
// calls refused by the breaker never count; failures arriving while open do
// not extend the open interval.
func TestOnlyFailuresCount(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, func(c *breaker.Config) { c.Failures = 2 })
	const m = "m"
	for i := 0; i < 10; i++ {
		record(t, b, allow(t, b, m), breaker.Success)
		record(t, b, allow(t, b, m), breaker.Abandon)
	}
	fail(t, b, m)
	if st := status(t, b, m); st.State != breaker.Closed || st.Failures != 1 {
		t.Fatalf("%+v, want closed with 1 failure", st)
	}
	late := allow(t, b, m) // admitted before the trip, answered after
	fail(t, b, m)
	opened := status(t, b, m)
	clk.Advance(10 * time.Second)
	record(t, b, late, breaker.Failure)
	record(t, b, breaker.Permit{Model: m}, breaker.Failure) // refused permit
	if st := status(t, b, m); st.State != breaker.Open || !st.OpenUntil.Equal(opened.OpenUntil) || st.Trips != 1 {
		t.Fatalf("late failure while open: %+v, want open until %v", st, opened.OpenUntil)
	}
}

// Two breakers on separate Redis connections (two processes) share one
// state: one trips it, the other sees it open, and of many concurrent
// callers at the end of the open interval exactly one gets the probe.
func TestSharedAcrossProcesses(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	tr1, tr2 := &transitions{}, &transitions{}
	b1 := newBreaker(t, env, clk, func(c *breaker.Config) { c.OnTransition = tr1.add })
	b2 := newBreaker(t, env, clk, func(c *breaker.Config) { c.OnTransition = tr2.add })
	const m = "gpt-4o-mini"
	for i := 0; i < 5; i++ {
		fail(t, []*breaker.Breaker{b1, b2}[i%2], m)
	}
	for _, b := range []*breaker.Breaker{b1, b2} {
		if p := allow(t, b, m); p.Allowed || p.State != breaker.Open {
			t.Fatalf("after 5 failures spread over two processes: %+v, want open everywhere", p)
		}
	}
	clk.Advance(breaker.DefaultOpen)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		probes []breaker.Permit
		by     []int
	)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			b := []*breaker.Breaker{b1, b2}[i%2]
			p, err := b.Allow(context.Background(), m)
			if err != nil {
				t.Error(err)
				return
			}
			if p.Allowed {
				mu.Lock()
				probes = append(probes, p)
				by = append(by, i%2)
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if len(probes) != 1 || !probes[0].Probe {
		t.Fatalf("%d of 40 concurrent callers were allowed (%+v), want exactly one probe", len(probes), probes)
	}
	owner, other := b1, b2
	if by[0] == 1 {
		owner, other = b2, b1
	}
	record(t, owner, probes[0], breaker.Success)
	if p := allow(t, other, m); !p.Allowed || p.State != breaker.Closed {
		t.Fatalf("the other process after the probe closed it: %+v", p)
	}
	// Each transition is reported once, by the process that made it.
	all := tr1.String() + " " + tr2.String()
	for _, want := range []string{"closed->open", "open->half_open", "half_open->closed"} {
		if n := strings.Count(all, want); n != 1 {
			t.Errorf("transition %s reported %d times (%q), want once", want, n, all)
		}
	}
}

// PerProcess (the drill's baseline) shares nothing.
func TestPerProcessSharesNothing(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	per := func(c *breaker.Config) { c.PerProcess = true }
	b1, b2 := newBreaker(t, env, clk, per), newBreaker(t, env, clk, per)
	for i := 0; i < 5; i++ {
		fail(t, b1, "m")
	}
	if p := allow(t, b1, "m"); p.Allowed {
		t.Fatalf("b1 after tripping: %+v", p)
	}
	if p := allow(t, b2, "m"); !p.Allowed || p.State != breaker.Closed {
		t.Fatalf("b2 with its own state: %+v, want closed", p)
	}
	list, err := b2.List(context.Background())
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v: want both processes' breakers of model m", list, err)
	}
	states := map[breaker.State]int{}
	for _, st := range list {
		if st.Model != "m" {
			t.Errorf("List: model %q, want m", st.Model)
		}
		states[st.State]++
	}
	if states[breaker.Open] != 1 || states[breaker.Closed] != 1 {
		t.Fatalf("List = %+v: want b1's open and b2's closed breaker", list)
	}
}

// A probe whose process dies (no Record) holds the half-open period only
// for its lease; its late verdict is then ignored. An abandoned probe hands
// over at once.
func TestProbeLease(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, func(c *breaker.Config) { c.ProbeLease = 5 * time.Second; c.Failures = 1 })
	const m = "m"
	fail(t, b, m)
	clk.Advance(breaker.DefaultOpen)
	dead := allow(t, b, m)
	clk.Advance(5*time.Second - time.Millisecond)
	if p := allow(t, b, m); p.Allowed {
		t.Fatalf("allowed while the probe's lease runs: %+v", p)
	}
	clk.Advance(time.Millisecond)
	next := allow(t, b, m)
	if !next.Probe {
		t.Fatalf("after the lease ran out: %+v, want the next probe", next)
	}
	record(t, b, dead, breaker.Success) // stale: ignored
	if st := status(t, b, m); st.State != breaker.HalfOpen || st.ProbeUntil.IsZero() {
		t.Fatalf("stale probe's verdict changed the state: %+v", st)
	}
	record(t, b, next, breaker.Abandon)
	again := allow(t, b, m)
	if !again.Probe {
		t.Fatalf("after the probe was abandoned: %+v, want a new probe at once", again)
	}
	record(t, b, again, breaker.Success)
	if st := status(t, b, m); st.State != breaker.Closed {
		t.Fatalf("%+v, want closed", st)
	}
}

// Await returns as soon as the probe's verdict is in.
func TestAwaitProbe(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, func(c *breaker.Config) { c.Failures = 1 })
	const m = "m"
	fail(t, b, m)
	clk.Advance(breaker.DefaultOpen)
	probe := allow(t, b, m)
	st, err := b.Await(context.Background(), m, 30*time.Millisecond, 10*time.Millisecond)
	if err != nil || st.State != breaker.HalfOpen {
		t.Fatalf("Await with the probe in flight: %+v %v, want half_open at the deadline", st, err)
	}
	done := make(chan breaker.Status, 1)
	go func() {
		st, err := b.Await(context.Background(), m, time.Minute, 10*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	record(t, b, probe, breaker.Success)
	select {
	case st := <-done:
		if st.State != breaker.Closed {
			t.Fatalf("Await returned %+v, want closed", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Await did not return after the probe closed the breaker")
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	env := llmqtest.Redis(t)
	for _, tc := range []struct {
		cfg  breaker.Config
		want string
	}{
		{breaker.Config{Failures: -1}, "failures"},
		{breaker.Config{Window: -time.Second}, "window"},
		{breaker.Config{Open: time.Microsecond}, "open"},
		{breaker.Config{Scope: "a{b}"}, "scope"},
	} {
		if _, err := breaker.New(env.Client, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	if _, err := breaker.New(nil, breaker.Config{}); err == nil {
		t.Error("New(nil) succeeded")
	}
}
