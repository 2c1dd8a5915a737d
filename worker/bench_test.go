package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/worker"
)

// BenchmarkEndToEnd enqueues a batch and drains it with two workers
// (concurrency 32 each, separate Redis connections) against an instant fake
// upstream with no limits: the pipeline's own throughput.
//
//	make bench-e2e
func BenchmarkEndToEnd(b *testing.B) {
	const n = 5000
	in := batchJSONL(n)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := newHarness(b, fakeupstream.Config{})
		for range 2 {
			h.startWorker(workerOpts{mod: func(c *worker.Config) { c.Concurrency = 32 }})
		}
		ctx := context.Background()
		b.StartTimer()
		start := time.Now()
		rep, err := h.prod.EnqueueBatch(ctx, strings.NewReader(in), producer.BatchID("bench"))
		if err != nil || rep.Enqueued != n {
			b.Fatalf("enqueue: %+v %v", rep, err)
		}
		enq := time.Since(start)
		h.waitFor("the batch to drain", 5*time.Minute, func() bool {
			st, err := h.prod.Batch(ctx, "bench")
			return err == nil && st.Done()
		})
		total := time.Since(start)
		b.ReportMetric(float64(n)/enq.Seconds(), "enqueue-jobs/s")
		b.ReportMetric(float64(n)/total.Seconds(), "e2e-jobs/s")
		if got := h.fake.Stats().Requests; got != n {
			b.Errorf("upstream saw %d requests for %d jobs", got, n)
		}
	}
}
