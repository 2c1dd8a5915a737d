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
	"github.com/llmq/llmq/redisconn"
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

// A service connects with a Redis URL: redis://, rediss://, unix://,
// redis+sentinel:// or redis+cluster://. An error never shows the URL's
// password.
func ExampleOpen() {
	queue, prefix := "example-open-"+llmqtest.Suffix(), "llmq-example-open-"+llmqtest.Suffix()
	p, err := producer.Open("redis://127.0.0.1:6379/0", producer.WithQueue(queue), producer.WithPrefix(prefix))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	defer func() {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
		removeKeys(rdb, queue, prefix)
		rdb.Close()
	}()

	ctx := context.Background()
	id, err := p.Enqueue(ctx, &jobs.Job{ID: "open-1", Body: json.RawMessage(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}`)})
	if err != nil {
		log.Fatal(err)
	}
	// No worker serves this queue: the job is enqueued, its result pending.
	_, err = p.Result(ctx, id)
	fmt.Println(errors.Is(err, producer.ErrPending))

	_, err = producer.Open("redis+sentinel://:hunter2@10.0.0.1:26379")
	fmt.Println(err)
	// Output:
	// true
	// producer: redis url: master_name: missing (redis+sentinel URLs need master_name=NAME)
}

// Wait blocks until a job has a result; Completion reads the answer's
// common case (first choice's text, finish reason, usage). An id that
// names no job is an error at once.
func ExampleProducer_Wait() {
	ctx := context.Background()
	queue, prefix := "example-wait-"+llmqtest.Suffix(), "llmq-example-wait-"+llmqtest.Suffix()
	stop := startExampleWorker(queue, prefix)
	defer stop()

	p, err := producer.Open(exampleRedisURL, producer.WithQueue(queue), producer.WithPrefix(prefix))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	id, err := p.Enqueue(ctx, &jobs.Job{Body: json.RawMessage(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}`)})
	if err != nil {
		log.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := p.Wait(wctx, id)
	if err != nil {
		log.Fatal(err)
	}
	c, err := res.Completion() // a *jobs.FailedError (jobs.ErrFailed) for a failed job
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q %s %d+%d tokens\n", c.Text, c.FinishReason, c.Usage.PromptTokens, c.Usage.CompletionTokens)

	_, err = p.Wait(wctx, "no-such-job")
	fmt.Println(errors.Is(err, producer.ErrNotFound), err)
	// Output:
	// "echo: Say hello" stop 9+7 tokens
	// true job "no-such-job": job not found
}

// startExampleWorker runs a fake upstream and a worker for the example, and
// returns a function that stops both and removes the example's keys.
func startExampleWorker(queue, prefix string) func() {
	_, stop := runWorker(exampleRedisURL, queue, prefix, nil)
	return stop
}

// exampleRedisURL is the Redis the examples use.
const exampleRedisURL = "redis://127.0.0.1:6379/0"

// runWorker runs a fake upstream and a worker serving queue of the Redis at
// redisURL; edit, when set, adjusts the worker's configuration. It returns
// the fake and a function that stops both and removes the keys of queue
// and prefix.
func runWorker(redisURL, queue, prefix string, edit func(*worker.Config)) (*fakeupstream.Server, func()) {
	fake, err := fakeupstream.New(fakeupstream.Config{})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(fake.Handler())
	client, err := upstream.New(upstream.Config{BaseURL: srv.URL + "/v1", Key: upstream.StaticKey("sk-example")})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := redisconn.Parse(redisURL)
	if err != nil {
		log.Fatal(err)
	}
	rdb := conn.NewClient()
	cfg := worker.Config{Redis: rdb, Upstream: client, Prefix: prefix, Queues: map[string]int{queue: 1},
		PollInterval: 100 * time.Millisecond, Log: zerolog.Nop()}
	if edit != nil {
		edit(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return fake, func() {
		cancel()
		<-done
		fake.Close()
		srv.Close()
		removeKeys(rdb, queue, prefix)
		rdb.Close()
	}
}

// removeKeys deletes the keys of queue and prefix.
func removeKeys(rdb redis.UniversalClient, queue, prefix string) {
	ctx := context.Background()
	for _, pattern := range []string{prefix + ":*", "asynq:{" + queue + "}*"} {
		keys, _ := redisconn.Scan(ctx, rdb, pattern)
		for _, k := range keys {
			rdb.Del(ctx, k)
		}
	}
	rdb.SRem(ctx, "asynq:queues", queue)
}
