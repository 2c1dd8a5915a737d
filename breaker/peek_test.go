package breaker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/llmqtest"
)

// allowIn runs AllowIn in a pipeline of its own, as the worker's gate does
// with its other reads.
func allowIn(t *testing.T, env *llmqtest.Env, b *breaker.Breaker, model string) (breaker.Permit, bool) {
	t.Helper()
	pipe := env.Client.Pipeline()
	read := b.AllowIn(context.Background(), pipe, model)
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	return read()
}

// windowKey is the Redis key of model's window hash (Key + ":window").
func windowKey(b *breaker.Breaker, model string) string { return b.Key(model) + ":window" }

// windowLen is the number of fields in model's window hash.
func windowLen(t *testing.T, env *llmqtest.Env, b *breaker.Breaker, model string) int64 {
	t.Helper()
	n, err := env.Client.HLen(context.Background(), windowKey(b, model)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Calls the gate read lets through count toward the failure rate exactly
// as Allow's do, and the read never lets a call through a breaker that is
// not closed.
func TestAllowInCountsInTheWindow(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	mod := func(c *breaker.Config) { c.Failures = 1000; c.MinCalls = 10 }
	gate, other := newBreaker(t, env, clk, mod), newBreaker(t, env, clk, mod)
	const m = "m"
	for range 10 {
		if p, settled := allowIn(t, env, gate, m); !settled || !p.Allowed || p.State != breaker.Closed {
			t.Fatalf("gate read of a closed breaker: %+v settled=%v, want allowed", p, settled)
		}
	}
	if st := status(t, other, m); st.Calls != 10 || st.Failures != 0 {
		t.Fatalf("after 10 gate reads: %+v, want 10 calls in the window", st)
	}
	// 10 calls + k failed calls: the k-th failure opens it when 2k >= 10 + k.
	for range 9 {
		fail(t, other, m)
	}
	if st := status(t, other, m); st.State != breaker.Closed || st.Calls != 19 || st.Failures != 9 {
		t.Fatalf("9 of 19 calls failed: %+v, want closed", st)
	}
	fail(t, other, m)
	if st := status(t, other, m); st.State != breaker.Open || st.Reason != "rate" {
		t.Fatalf("10 of 20 calls failed: %+v, want open for the rate", st)
	}
	if p, settled := allowIn(t, env, gate, m); settled || p.Allowed {
		t.Fatalf("gate read of an open breaker: %+v settled=%v, want unsettled (the caller asks Allow)", p, settled)
	}
}

// Calls the gate read counts while the breaker is open are never made; the
// window they land in is deleted when the probe closes the breaker.
func TestAllowInWhileOpenLeavesNoCalls(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	const m = "m"
	for range breaker.DefaultFailures {
		fail(t, b, m)
	}
	for range 50 {
		if _, settled := allowIn(t, env, b, m); settled {
			t.Fatal("gate read settled an open breaker")
		}
		clk.Advance(100 * time.Millisecond)
	}
	clk.Advance(breaker.DefaultOpen)
	probe := allow(t, b, m)
	if !probe.Probe {
		t.Fatalf("after the open interval: %+v, want the probe", probe)
	}
	record(t, b, probe, breaker.Success)
	if st := status(t, b, m); st.State != breaker.Closed || st.Calls != 0 || st.Failures != 0 {
		t.Fatalf("closed by its probe: %+v, want an empty window", st)
	}
}

// The window hash holds a field per bucket with calls (two with failures)
// in the window: the first call of each bucket in a process (AllowIn or
// Allow) runs prune.lua, and a failure's record prunes too, so stale fields
// go whatever the traffic — also those an idle or departed process left,
// and the ring layout of earlier versions.
func TestWindowFieldsArePruned(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	const m = "m"
	window := windowKey(b, m)
	ctx := context.Background()
	for range 5 * breaker.WindowBuckets { // five windows, a call a second
		allowIn(t, env, b, m)
		clk.Advance(time.Second)
	}
	if n := windowLen(t, env, b, m); n > breaker.WindowBuckets {
		t.Fatalf("after five windows of calls the window hash has %d fields, want at most %d", n, breaker.WindowBuckets)
	}
	// Now is a second after the last call: the window holds 59 of them.
	if st := status(t, b, m); st.Calls != breaker.WindowBuckets-1 {
		t.Fatalf("%+v, want %d calls in the window", st, breaker.WindowBuckets-1)
	}
	// Fields no gate read will pass again: long-gone buckets, and the ring
	// layout of earlier versions (slot-numbered b/c/f fields).
	if err := env.Client.HSet(ctx, window, "c5", 7, "f5", 7, "b3", 1, "c3", 9, "f3", 0).Err(); err != nil {
		t.Fatal(err)
	}
	fail(t, b, m)
	fields, err := env.Client.HKeys(ctx, window).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fields {
		switch f {
		case "c5", "f5", "b3", "c3", "f3":
			t.Fatalf("stale field %q survived a failure's record: %v", f, fields)
		}
	}
	if st := status(t, b, m); st.Calls != breaker.WindowBuckets || st.Failures != 1 { // the failed call is the 60th
		t.Fatalf("after pruning: %+v, want %d calls and 1 failure", st, breaker.WindowBuckets)
	}
}

// Allow alone (fallback tiers, second calls) prunes as the gate read does,
// and so does traffic too sparse for a window to hold two calls.
func TestWindowStaysSmallOnEveryPath(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	for range 5 * breaker.WindowBuckets {
		record(t, b, allow(t, b, "fallback"), breaker.Success)
		clk.Advance(time.Second)
	}
	if n := windowLen(t, env, b, "fallback"); n > breaker.WindowBuckets {
		t.Fatalf("five windows of Allow: the window hash has %d fields, want at most %d", n, breaker.WindowBuckets)
	}
	for range 50 { // a call every 150 s: never two in a window
		allowIn(t, env, b, "sparse")
		clk.Advance(150 * time.Second)
	}
	if n := windowLen(t, env, b, "sparse"); n != 1 {
		t.Fatalf("50 calls 150 s apart: the window hash has %d fields, want 1", n)
	}
}

// Fields far ahead of now (a window whose bucket width changed with the
// config) never count and are pruned; a bucket a skewed clock put just
// ahead counts.
func TestWindowIgnoresFieldsFarAhead(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	const m = "m"
	ctx := context.Background()
	window := windowKey(b, m)
	now := clk.Now().Unix() // 1 s buckets
	far, near := fmt.Sprintf("c%d", 2*now), fmt.Sprintf("c%d", now+1)
	if err := env.Client.HSet(ctx, window, far, 3000, near, 2).Err(); err != nil {
		t.Fatal(err)
	}
	if st := status(t, b, m); st.Calls != 2 {
		t.Fatalf("%+v, want the 2 calls of the bucket 1 s ahead and none of the one far ahead", st)
	}
	allowIn(t, env, b, m)
	if ok, err := env.Client.HExists(ctx, window, far).Result(); err != nil || ok {
		t.Fatalf("the field far ahead survived the bucket's prune (%v, %v)", ok, err)
	}
	if st := status(t, b, m); st.Calls != 3 {
		t.Fatalf("%+v, want 3 calls", st)
	}
}

// The window always has an expiry: also when a count recreates it in a
// bucket whose prune this process already ran (after a trip deleted it).
func TestWindowAlwaysExpires(t *testing.T) {
	env := llmqtest.Redis(t)
	clk := newClock()
	b := newBreaker(t, env, clk, nil)
	const m = "m"
	ctx := context.Background()
	window := windowKey(b, m)
	allowIn(t, env, b, m) // this bucket's prune
	for range breaker.DefaultFailures {
		fail(t, b, m) // the trip deletes the window
	}
	if n, err := env.Client.Exists(ctx, window).Result(); err != nil || n != 0 {
		t.Fatalf("after the trip the window exists (%d, %v)", n, err)
	}
	allowIn(t, env, b, m) // same bucket: no pipelined prune; the count recreates the hash
	ttl, err := env.Client.PTTL(ctx, window).Result()
	if err != nil || ttl <= 0 {
		t.Fatalf("recreated window: PTTL %v (%v), want an expiry", ttl, err)
	}
}
