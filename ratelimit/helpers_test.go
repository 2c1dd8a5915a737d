package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func redisAddr() string {
	if a := os.Getenv("LLMQ_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// testRedis returns a client and a key prefix no other test uses; the
// prefix's keys are deleted when t ends.
func testRedis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redisAddr()})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s does not answer (%v): start redis-server", redisAddr(), err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "llmqtest:ratelimit:" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+":*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		_ = c.Close()
	})
	return c, prefix
}

// clock is a settable clock for Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.UnixMilli(1_800_000_000_000)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const model = "gpt-test"

// newTest returns a Limiter with budget b for model on a fresh prefix,
// driven by a fake clock.
func newTest(t testing.TB, b Budget, opts ...func(*Config)) (*Limiter, *clock) {
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
