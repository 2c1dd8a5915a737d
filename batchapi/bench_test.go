package batchapi

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// BenchmarkRemoveQueued measures removing a cancelled batch's queued jobs
// (all of them pending), per batch size:
//
//	go test -run '^$' -bench BenchmarkRemoveQueued -benchtime 1x ./batchapi/
func BenchmarkRemoveQueued(b *testing.B) {
	for _, n := range []int{1000, 5000, 20000, 50000} {
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

// BenchmarkCancelDuringEnqueue measures, through the SDK, how long a cancel
// sent while a batch of 50,000 requests is being enqueued takes to end the
// batch (cancelled, its error file written):
//
//	go test -run '^$' -bench BenchmarkCancelDuringEnqueue -benchtime 1x -timeout 30m ./batchapi/
func BenchmarkCancelDuringEnqueue(b *testing.B) {
	const n = DefaultMaxRequests
	env := llmqtest.Redis(b)
	s, err := New(Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []Client{{Name: "alice", Key: "sk-bench-key-0123456789abcdef"}}, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	q := TenantQueue(env.Queue, "alice")
	b.Cleanup(func() {
		srv.Close()
		s.Close()
		ctx := context.Background()
		if keys, _ := env.Client.Keys(ctx, "asynq:{"+q+"}*").Result(); len(keys) > 0 {
			env.Client.Del(ctx, keys...)
		}
		env.Client.SRem(ctx, "asynq:queues", q)
	})
	c := openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("sk-bench-key-0123456789abcdef"), option.WithMaxRetries(0))
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"p"}]}}`+"\n", i)
	}
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		f, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(in.String()), "in.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
		if err != nil {
			b.Fatal(err)
		}
		bt, err := c.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if queued, _ := env.Client.LLen(ctx, "asynq:{"+q+"}:pending").Result(); queued > 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.StartTimer()
		if _, err := c.Batches.Cancel(ctx, bt.ID); err != nil {
			b.Fatal(err)
		}
		for bt.Status != openai.BatchStatusCancelled {
			time.Sleep(10 * time.Millisecond)
			if bt, err = c.Batches.Get(ctx, bt.ID); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if bt.RequestCounts.Total != n || bt.RequestCounts.Failed != n {
			b.Fatalf("request counts %+v", bt.RequestCounts)
		}
		b.StartTimer()
	}
}
