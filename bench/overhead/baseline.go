package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/upstream"
)

// baselineResultTTL is how long the baseline keeps an answer (llmq's
// default results TTL, so both SETs carry an expiry).
const baselineResultTTL = 7 * 24 * time.Hour

// plainHandler is what a user of plain asynq would write for the same job:
// decode the payload, call the upstream, store the answer with one SET.
type plainHandler struct {
	client *upstream.Client
	rdb    *redis.Client
	prefix string
}

// ProcessTask implements asynq.Handler.
func (h *plainHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var job struct {
		ID   string          `json:"id"`
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(t.Payload(), &job); err != nil {
		return fmt.Errorf("decode payload: %v: %w", err, asynq.SkipRetry)
	}
	resp, err := h.client.Chat(ctx, job.Body)
	if err != nil {
		return err
	}
	return h.rdb.Set(ctx, h.prefix+":result:"+job.ID, resp.Body, baselineResultTTL).Err()
}

// runBaselineWorker serves the queue with plainHandler until SIGTERM.
func runBaselineWorker(o options) error {
	client, err := upstream.New(upstream.Config{BaseURL: o.url, Key: upstream.StaticKey(benchKey)})
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: o.redisAddr})
	defer rdb.Close()
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: o.concurrency,
		Queues:      map[string]int{o.queue: 1},
		LogLevel:    asynq.ErrorLevel,
	})
	if o.pprofAddr != "" {
		// Listening before asynq lists the server: the bench asks for the
		// profiles as soon as it does.
		l, err := net.Listen("tcp", o.pprofAddr)
		if err != nil {
			return err
		}
		defer l.Close()
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.Handle("/debug/pprof/allocs", pprof.Handler("allocs"))
		go func() { _ = http.Serve(l, mux) }()
	}
	if err := srv.Start(&plainHandler{client: client, rdb: rdb, prefix: o.prefix}); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Shutdown()
	return nil
}
