package batchapi

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// BenchmarkRemoveQueued measures removing a cancelled batch's queued jobs
// (all of them pending), per batch size:
//
//	go test -run '^$' -bench BenchmarkRemoveQueued -benchtime 1x ./batchapi/
func BenchmarkRemoveQueued(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("jobs=%d", n), func(b *testing.B) {
			env := llmqtest.Redis(b)
			s, err := New(Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
				Clients: []Client{{Name: "alice", Key: "sk-bench-key-0123456789abcdef"}}, Log: zerolog.Nop()})
			if err != nil {
				b.Fatal(err)
			}
			q := TenantQueue(env.Queue, "alice")
			b.Cleanup(func() {
				s.Close()
				ctx := context.Background()
				if keys, _ := env.Client.Keys(ctx, "asynq:{"+q+"}*").Result(); len(keys) > 0 {
					env.Client.Del(ctx, keys...)
				}
				env.Client.SRem(ctx, "asynq:queues", q)
			})
			var in strings.Builder
			for i := range n {
				fmt.Fprintf(&in, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"p"}]}}`+"\n", i)
			}
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				rec := &batchRecord{Batch: Batch{ID: fmt.Sprintf("batch_bench%d", i), Status: StatusCancelling}, Tenant: "alice", Queue: q}
				if _, err := s.prod.EnqueueBatch(ctx, strings.NewReader(in.String()), producer.BatchID(rec.Batch.ID),
					producer.JobOptions(producer.Queue(q))); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := s.removeQueued(ctx, rec); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if removed, _ := env.Client.HLen(ctx, s.st.removedKey(rec.Batch.ID)).Result(); removed != int64(n) {
					b.Fatalf("%d of %d jobs removed", removed, n)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n)/1e3, "µs/job")
		})
	}
}
