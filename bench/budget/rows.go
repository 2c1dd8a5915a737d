package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/producer"
)

// row is one line of the table: a kind of fleet and its process count.
type row struct {
	kind  string // "llmq", "split" or "nosplit"
	procs int
}

// parseRows reads "llmq1,llmq4,split4,nosplit4".
func parseRows(s string) ([]row, error) {
	var rows []row
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		kind := strings.TrimRight(f, "0123456789")
		n, err := strconv.Atoi(f[len(kind):])
		if err != nil || n < 1 || (kind != "llmq" && kind != "split" && kind != "nosplit") {
			return nil, fmt.Errorf("-rows: %q: want llmqN, splitN or nosplitN with N ≥ 1, e.g. llmq4", f)
		}
		rows = append(rows, row{kind: kind, procs: n})
	}
	return rows, nil
}

func (r row) title() string {
	switch r.kind {
	case "llmq":
		return "llmq worker (fleet budget)"
	case "split":
		return "baseline: x/time/rate, split 1/N"
	}
	return "baseline: x/time/rate, no split"
}

// result is what a row measured.
type result struct {
	drain            time.Duration
	throttled, calls int64
}

// fleet is a running set of worker processes; stop shuts them down.
type fleet interface {
	stop() error
}

// run drains b through r's fleet against a fresh fake upstream and a fresh
// slice of Redis, and removes the slice afterwards.
func (r row) run(ctx context.Context, o options, b *batch) (result, error) {
	e, err := newEnv(ctx, o.redisAddr)
	if err != nil {
		return result{}, err
	}
	defer e.cleanup()
	fake, err := fakeupstream.New(fakeupstream.Config{RPM: o.rpm, TPM: o.tpm, BurstRequests: o.burstReq, BurstTokens: o.burstTok, Latency: o.latency})
	if err != nil {
		return result{}, err
	}
	w := &watch{next: fake.Handler(), want: len(b.jobs), done: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, fmt.Errorf("listen for the fake upstream: %w", err)
	}
	srv := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		fake.Close()
		_ = srv.Close()
	}()
	url := "http://" + ln.Addr().String() + "/v1"

	p, err := producer.New(asynq.RedisClientOpt{Addr: o.redisAddr}, producer.WithQueue(e.queue), producer.WithPrefix(e.prefix),
		producer.WithAttempts(25), producer.WithRetention(time.Minute), producer.WithResultTTL(10*time.Minute))
	if err != nil {
		return result{}, err
	}
	defer p.Close()
	if _, err := p.EnqueueBatch(ctx, strings.NewReader(b.jsonl()), producer.BatchID("bench")); err != nil {
		return result{}, fmt.Errorf("enqueue the batch: %w", err)
	}

	var f fleet
	switch r.kind {
	case "llmq":
		f, err = startLLMQ(o, e, url, r.procs)
	default:
		f, err = startBaseline(o, e, url, r.procs, r.kind == "split")
	}
	if err != nil {
		return result{}, err
	}
	timer := time.NewTimer(o.rowTimeout)
	defer timer.Stop()
	var waitErr error
	select {
	case <-w.done:
	case <-timer.C:
		waitErr = fmt.Errorf("only %d of %d jobs served within %s", w.served(), len(b.jobs), o.rowTimeout)
	case <-ctx.Done():
		waitErr = ctx.Err()
	}
	if err := f.stop(); err != nil && waitErr == nil {
		waitErr = err
	}
	if waitErr != nil {
		return result{}, waitErr
	}
	st := fake.Stats()
	first, last := w.span()
	return result{drain: last.Sub(first), throttled: st.Throttled, calls: st.Requests}, nil
}

// env is one row's slice of Redis: its own key prefix and asynq queue.
type env struct {
	rdb           *redis.Client
	prefix, queue string
}

func newEnv(ctx context.Context, addr string) (*env, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("Redis at %s does not answer (%w): run `make redis`", addr, err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return &env{rdb: rdb, prefix: "llmqbench:budget:" + id, queue: "llmqbench-budget-" + id}, nil
}

// cleanup deletes the row's keys and queue.
func (e *env) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, pattern := range []string{e.prefix + ":*", "asynq:{" + e.queue + "}*"} {
		iter := e.rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			e.rdb.Del(ctx, iter.Val())
		}
	}
	e.rdb.SRem(ctx, "asynq:queues", e.queue)
	_ = e.rdb.Close()
}

// watch sits in front of the fake upstream and notes the first arrival and
// the last successful answer; done closes when want answers succeeded.
type watch struct {
	next http.Handler
	want int

	mu          sync.Mutex
	first, last time.Time
	ok          int
	done        chan struct{}
}

func (w *watch) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/chat/completions") {
		w.next.ServeHTTP(rw, r)
		return
	}
	at := time.Now()
	w.mu.Lock()
	if w.first.IsZero() {
		w.first = at
	}
	w.mu.Unlock()
	sr := &fakeupstream.StatusRecorder{ResponseWriter: rw}
	w.next.ServeHTTP(sr, r)
	if sr.Status != http.StatusOK {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ok++
	w.last = time.Now()
	if w.ok == w.want {
		close(w.done)
	}
}

func (w *watch) served() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ok
}

func (w *watch) span() (first, last time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first, w.last
}

// lockedBuffer is a goroutine-safe log sink.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
