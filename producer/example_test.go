package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

// A backend service enqueues one job and a JSONL batch, then reads results.
// (The worker and the fake upstream run here so the example is complete; in
// production they are `llmq worker` processes and the real API.)
func Example() {
	ctx := context.Background()
	queue, prefix := "example-"+llmqtest.Suffix(), "llmq-example-"+llmqtest.Suffix()
	redisOpt := asynq.RedisClientOpt{Addr: "127.0.0.1:6379"}
	stop := startExampleWorker(queue, prefix)
	defer stop()

	p, err := producer.New(redisOpt, producer.WithQueue(queue), producer.WithPrefix(prefix))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	job := &jobs.Job{
		ID:   "greeting-1",
		Body: json.RawMessage(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}`),
	}
	id, err := p.Enqueue(ctx, job, producer.MaxAttempts(3))
	if err != nil {
		log.Fatal(err)
	}
	// Enqueueing the same id again is a no-op.
	if _, err := p.Enqueue(ctx, job); errors.Is(err, producer.ErrDuplicate) {
		fmt.Println("duplicate ignored")
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := p.Wait(wctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Status, res.ServedBy)

	batch := `{"custom_id":"a","model":"gpt-4o-mini","messages":[{"role":"user","content":"one"}]}
{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"two"}]}}`
	rep, err := p.EnqueueBatch(ctx, strings.NewReader(batch), producer.BatchID("example-batch"))
	if err != nil {
		log.Fatal(err)
	}
	r, err := p.Wait(wctx, rep.BatchID+":b")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(rep.Enqueued, r.CustomID, r.Status)

	_, err = p.Enqueue(ctx, &jobs.Job{Body: json.RawMessage(`{"model":"gpt-4o-mini","messages":[{"role":"robot","content":"x"}]}`)})
	fmt.Println(err)
	// Output:
	// duplicate ignored
	// succeeded primary
	// 2 b succeeded
	// invalid job: messages[0].role: must be one of system,user,assistant,tool,developer
}

// startExampleWorker runs a fake upstream and a worker for the example, and
// returns a function that stops both and removes the example's keys.
func startExampleWorker(queue, prefix string) func() {
	fake, err := fakeupstream.New(fakeupstream.Config{})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(fake.Handler())
	client, err := upstream.New(upstream.Config{BaseURL: srv.URL + "/v1", Key: upstream.StaticKey("sk-example")})
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	w, err := worker.New(worker.Config{Redis: rdb, Upstream: client, Prefix: prefix, Queues: map[string]int{queue: 1},
		PollInterval: 100 * time.Millisecond, Log: zerolog.Nop()})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return func() {
		cancel()
		<-done
		fake.Close()
		srv.Close()
		for _, pattern := range []string{prefix + ":*", "asynq:{" + queue + "}*"} {
			keys, _ := rdb.Keys(context.Background(), pattern).Result()
			if len(keys) > 0 {
				rdb.Del(context.Background(), keys...)
			}
		}
		rdb.SRem(context.Background(), "asynq:queues", queue)
		rdb.Close()
	}
}
