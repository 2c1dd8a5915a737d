package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
)

// row is one line of a table: a kind of fleet, optionally its own stages
// and llmq's estimate method.
type row struct {
	kind   string // "llmq", "split" or "nosplit"
	stages []stage
	method jobs.Method // llmq's estimate.method; "" = llmq's default
}

// key names the row for -rows: its kind, "llmq-tokenizer" for the
// tokenizer-estimate llmq row.
func (r row) key() string {
	if r.method != "" {
		return r.kind + "-" + string(r.method)
	}
	return r.kind
}

// parseRows reads -rows: nil for all rows.
func parseRows(s string) (map[string]bool, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	only := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch f {
		case "llmq", "llmq-tokenizer", "llmq-chars", "split", "nosplit":
			only[f] = true
		default:
			return nil, fmt.Errorf("-rows: %q: want llmq, llmq-tokenizer, llmq-chars, split or nosplit", f)
		}
	}
	return only, nil
}

func filterRows(rows []row, only map[string]bool) []row {
	var out []row
	for _, r := range rows {
		if only[r.key()] {
			out = append(out, r)
		}
	}
	return out
}

func (r row) title() string {
	switch {
	case r.kind == "llmq" && r.method != "":
		return "llmq worker (" + string(r.method) + " estimate)"
	case r.kind == "llmq":
		return "llmq worker (default estimate)"
	case r.kind == "split":
		return "baseline: x/time/rate, split 1/N"
	}
	return "baseline: x/time/rate, no split"
}

func (r row) stagesOf(sc *scenario) []stage {
	if r.stages != nil {
		return r.stages
	}
	return sc.stages
}

func (r row) fleet(sc *scenario) string {
	c := *sc
	c.stages = r.stagesOf(sc)
	return c.fleet()
}

// result is what a row measured.
type result struct {
	drain            time.Duration
	throttled, calls int64
	factor           float64 // llmq rows: the learned calibration factor
}

// workerFleet is a running set of workers: add starts more, stop shuts
// them all down.
type workerFleet interface {
	add(ctx context.Context, procs, concurrency int) error
	stop() error
}

// run drains b through r's fleet against a fresh fake upstream for sc and a
// fresh slice of Redis, and removes the slice afterwards.
func (r row) run(ctx context.Context, o options, sc *scenario, b *batch) (result, error) {
	e, err := newEnv(ctx, o.redisAddr)
	if err != nil {
		return result{}, err
	}
	defer e.cleanup()
	fake, err := fakeupstream.New(fakeupstream.Config{RPM: sc.rpm, TPM: sc.tpm, BurstRequests: sc.burstReq, BurstTokens: sc.burstTok,
		Quantum: sc.quantum, Accounting: sc.accounting, Latency: o.latency})
	if err != nil {
		return result{}, err
	}
	w := &watch{next: fake.Handler(), want: len(b.jobs), done: make(chan struct{}), arrived: make(chan struct{})}
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

	stages := r.stagesOf(sc)
	var f workerFleet
	switch r.kind {
	case "llmq":
		f, err = newLLMQFleet(o, sc, r, e, url)
	default:
		procs := 0
		for _, s := range stages {
			procs += s.procs
		}
		f = newBaselineFleet(o, sc, e, url, procs, r.kind == "split")
	}
	if err != nil {
		return result{}, err
	}
	addErr := make(chan error, len(stages))
	if err := f.add(ctx, stages[0].procs, stages[0].concurrency); err != nil {
		_ = f.stop()
		return result{}, err
	}
	go func() {
		select {
		case <-w.arrived:
		case <-w.done:
			return
		}
		start := time.Now()
		for _, s := range stages[1:] {
			select {
			case <-time.After(time.Until(start.Add(s.at))):
			case <-w.done:
				return
			}
			if err := f.add(ctx, s.procs, s.concurrency); err != nil {
				addErr <- err
				return
			}
		}
	}()
	timer := time.NewTimer(o.rowTimeout)
	defer timer.Stop()
	var waitErr error
	select {
	case <-w.done:
	case err := <-addErr:
		waitErr = err
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
	res := result{drain: last.Sub(first), throttled: st.Throttled, calls: st.Requests}
	if r.kind == "llmq" {
		// The calibration factor the fleet learned (budget.lua's field f).
		res.factor, _ = e.rdb.HGet(ctx, e.prefix+":budget:{default:"+benchModel+"}", "f").Float64()
	}
	return res, nil
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
	arrived     chan struct{} // closed at the first arrival
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
		close(w.arrived)
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
