// Package llmqtest holds test helpers for llmq and for services that use it:
// an isolated slice of a real Redis (its own key prefix and asynq queue,
// removed when the test ends). The Redis is 127.0.0.1:6379, or
// LLMQ_TEST_REDIS_ADDR, or any URL llmq accepts in LLMQ_TEST_REDIS_URL — a
// redis+cluster:// or redis+sentinel:// URL runs the same tests against a
// cluster or a Sentinel-managed master.
package llmqtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/redisconn"
)

// Env is one test's slice of Redis.
type Env struct {
	// Addr is the Redis address (LLMQ_TEST_REDIS_ADDR, default
	// 127.0.0.1:6379); with LLMQ_TEST_REDIS_URL, its first node.
	Addr string
	// URL is the Redis URL (LLMQ_TEST_REDIS_URL, or redis://Addr/0).
	URL string
	// Opt connects asynq to the same Redis.
	Opt asynq.RedisConnOpt
	// Client is a go-redis client for the test's own reads.
	Client redis.UniversalClient
	// Prefix is a key prefix no other test uses.
	Prefix string
	// Queue is an asynq queue name no other test uses.
	Queue string
}

// RedisURL returns the Env's Redis URL, for LLMQ_REDIS_URL.
func (e *Env) RedisURL() string {
	if e.URL == "" {
		return "redis://" + e.Addr + "/0"
	}
	return e.URL
}

// NewClient returns a new go-redis client for the Env's Redis; the caller
// closes it.
func (e *Env) NewClient() redis.UniversalClient { return newClient(e.RedisURL()) }

// NewClient returns a new go-redis client for the Redis tests use (URL);
// the caller closes it. It panics when LLMQ_TEST_REDIS_URL is not a Redis
// URL.
func NewClient() redis.UniversalClient { return newClient(URL()) }

func newClient(u string) redis.UniversalClient {
	c, err := redisconn.Parse(u)
	if err != nil {
		panic("llmqtest: LLMQ_TEST_REDIS_URL: " + err.Error())
	}
	return c.NewClient()
}

// Redis returns a fresh Env and removes its keys and queue when t ends. It
// fails the test at once when Redis does not answer.
func Redis(t testing.TB) *Env {
	t.Helper()
	u := URL()
	conn, err := redisconn.Parse(u)
	if err != nil {
		t.Fatalf("llmqtest: LLMQ_TEST_REDIS_URL: %v", err)
	}
	c := conn.NewClient()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("llmqtest: Redis at %s does not answer (%v): start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`", conn.Redacted(), err)
	}
	id := Suffix()
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	e := &Env{
		Addr:   conn.Addrs[0],
		URL:    u,
		Opt:    conn.AsynqOpt(),
		Client: c,
		Prefix: "llmqtest:" + name + ":" + id,
		Queue:  "llmqtest-" + name + "-" + id,
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Flush(ctx)
		_ = c.Close()
	})
	return e
}

// Flush deletes every key of the Env: its prefix and its asynq queue (on
// every master of a cluster, key by key: keys of different slots cannot
// share a DEL).
func (e *Env) Flush(ctx context.Context) {
	for _, pattern := range []string{e.Prefix + ":*", "asynq:{" + e.Queue + "}*"} {
		keys, _ := redisconn.Scan(ctx, e.Client, pattern)
		for len(keys) > 0 {
			n := min(len(keys), 500)
			_, _ = e.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys[:n] {
					p.Unlink(ctx, k)
				}
				return nil
			})
			keys = keys[n:]
		}
	}
	e.Client.SRem(ctx, "asynq:queues", e.Queue)
}

// URL returns the URL of the Redis tests use: LLMQ_TEST_REDIS_URL, or
// redis://Addr()/0.
func URL() string {
	if u := os.Getenv("LLMQ_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://" + Addr() + "/0"
}

// Addr returns the address of the Redis tests use: LLMQ_TEST_REDIS_ADDR, or
// 127.0.0.1:6379.
func Addr() string {
	if a := os.Getenv("LLMQ_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// Suffix returns a short random hex string for unique names.
func Suffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
