// Package llmqtest holds test helpers for llmq and for services that use it:
// an isolated slice of a real Redis (its own key prefix and asynq queue,
// removed when the test ends).
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
)

// Env is one test's slice of Redis.
type Env struct {
	// Addr is the Redis address (LLMQ_TEST_REDIS_ADDR, default 127.0.0.1:6379).
	Addr string
	// Opt connects asynq to the same Redis.
	Opt asynq.RedisClientOpt
	// Client is a go-redis client for the test's own reads.
	Client *redis.Client
	// Prefix is a key prefix no other test uses.
	Prefix string
	// Queue is an asynq queue name no other test uses.
	Queue string
}

// RedisURL returns the Env's Redis as a redis:// URL.
func (e *Env) RedisURL() string { return "redis://" + e.Addr + "/0" }

// Redis returns a fresh Env and removes its keys and queue when t ends. It
// fails the test at once when Redis does not answer.
func Redis(t testing.TB) *Env {
	t.Helper()
	addr := Addr()
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("llmqtest: Redis at %s does not answer (%v): start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`", addr, err)
	}
	id := Suffix()
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	e := &Env{
		Addr:   addr,
		Opt:    asynq.RedisClientOpt{Addr: addr},
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

// Flush deletes every key of the Env: its prefix and its asynq queue.
func (e *Env) Flush(ctx context.Context) {
	for _, pattern := range []string{e.Prefix + ":*", "asynq:{" + e.Queue + "}*"} {
		iter := e.Client.Scan(ctx, 0, pattern, 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 500 {
				e.Client.Del(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			e.Client.Del(ctx, keys...)
		}
	}
	e.Client.SRem(ctx, "asynq:queues", e.Queue)
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
