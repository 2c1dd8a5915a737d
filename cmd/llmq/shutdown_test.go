package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// SIGTERM while every job is on its last attempt and its call outlasts the
// shutdown timeout: asynq puts the jobs back, and the canceled calls are
// not failures — nothing is stored for them, no attempt is burned, and a
// new worker finishes the batch with every job succeeded (enqueue --wait
// exits 0).
func TestSIGTERMOnLastAttemptIsNoFailure(t *testing.T) {
	const n = 4
	p := newProcEnv(t, fakeupstream.Config{Latency: 2 * time.Second}, func(c *config.Config) {
		c.Worker.ShutdownTimeout = 200 * time.Millisecond
		c.Retry.Attempts = 1
	})
	if out, errOut, code := p.run(jsonl(n), "enqueue", "-", "--batch", "last"); code != 0 {
		t.Fatalf("enqueue: %d %s %s", code, out, errOut)
	}
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	w1 := p.start("worker", "--concurrency", fmt.Sprint(n))
	waitFor(t, "every job's call in flight", 20*time.Second, func() bool { return p.fake.Stats().Requests >= n })
	w1.stop(t, 10*time.Second)
	st, err := store.Batch(ctx(t), "last")
	if err != nil {
		t.Fatal(err)
	}
	if st.Failed != 0 || st.Succeeded != 0 {
		t.Fatalf("after SIGTERM the batch is %+v; calls canceled by shutdown must store nothing", st)
	}
	if err := store.Export(ctx(t), "last", func(id string, r *jobs.Result) error {
		if r != nil {
			return fmt.Errorf("job %s has a result after a shutdown cancel: %+v", id, r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if logs := w1.logs.String(); !strings.Contains(logs, "goes back to the queue") {
		t.Errorf("worker log does not say the jobs went back:\n%s", logs)
	}
	p.start("worker", "--concurrency", fmt.Sprint(n))
	out, errOut, code := p.run(jsonl(n), "enqueue", "-", "--batch", "last", "--wait")
	if code != 0 {
		t.Fatalf("enqueue --wait exit %d after a restart, want 0 (every job succeeds):\n%s\n%s", code, out, errOut)
	}
	if st, _ := store.Batch(ctx(t), "last"); st.Succeeded != n || st.Failed != 0 {
		t.Fatalf("batch %+v, want %d succeeded", st, n)
	}
}
