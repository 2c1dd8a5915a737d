package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/llmq/llmq/llmqtest"

	"github.com/redis/go-redis/v9"
)

// testRedis returns a client and a key prefix no other test uses; the
// prefix's keys are deleted when t ends.
func testRedis(t testing.TB) (redis.UniversalClient, string) {
	t.Helper()
	env := llmqtest.Redis(t)
	return env.Client, env.Prefix
}

// newClient is a client of the Redis the tests use, standing in for another
// process.
func newClient() redis.UniversalClient { return llmqtest.NewClient() }

// clock is the manual clock the tests drive.
type clock = llmqtest.Clock

func newClock() *clock { return llmqtest.NewClock(time.UnixMilli(1_800_000_000_000)) }

const model = "gpt-test"

// newTest returns a Limiter with budget b for model on a fresh prefix,
// driven by a fake clock. A burst b leaves at 0 is one minute's limit (set
// explicitly); newDefaultBurstTest keeps the default burst.
func newTest(t testing.TB, b Budget, opts ...func(*Config)) (*Limiter, *clock) {
	t.Helper()
	if b.BurstRequests == 0 {
		b.BurstRequests = b.RPM
	}
	if b.BurstTokens == 0 {
		b.BurstTokens = b.TPM
	}
	return newDefaultBurstTest(t, b, opts...)
}

// newDefaultBurstTest is newTest with b's bursts as they are.
func newDefaultBurstTest(t testing.TB, b Budget, opts ...func(*Config)) (*Limiter, *clock) {
	t.Helper()
	c, prefix := testRedis(t)
	clk := newClock()
	cfg := Config{Prefix: prefix, Budgets: map[string]Budget{model: b}, Now: clk.Now}
	for _, o := range opts {
		o(&cfg)
	}
	l, err := New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l, clk
}

func mustReserve(t testing.TB, l *Limiter, c Cost) Reservation {
	t.Helper()
	r, err := l.Reserve(context.Background(), model, c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func usage(t testing.TB, l *Limiter) Snapshot {
	t.Helper()
	s, err := l.Usage(context.Background(), model)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
