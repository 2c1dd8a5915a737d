package batchapi_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// The Batch API's jobs get the task timeout of the workers' call timeout
// and fallback tiers it is given (llmq serve passes the configuration's).
func TestBatchJobsGetTheDerivedTaskTimeout(t *testing.T) {
	env := llmqtest.Redis(t)
	const call = 20 * time.Minute
	svc, err := batchapi.New(batchapi.Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []batchapi.Client{{Name: "alice", Key: testKey}}, Log: zerolog.Nop(),
		Producer: []producer.Option{producer.WithCallTimeout(call), producer.WithFallbackTiers(2)}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	q := batchapi.TenantQueue(env.Queue, "alice")
	t.Cleanup(func() {
		srv.Close()
		svc.Close()
		ctx := context.Background()
		if keys, _ := env.Client.Keys(ctx, "asynq:{"+q+"}*").Result(); len(keys) > 0 {
			env.Client.Del(ctx, keys...)
		}
		env.Client.SRem(ctx, "asynq:queues", q)
	})
	c := openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey(testKey), option.WithMaxRetries(0))
	b := run(t, c, strings.Join([]string{line(1), line(2)}, "\n")+"\n")
	if b.Status != openai.BatchStatusInProgress {
		t.Fatalf("batch %s is %s, want in_progress", b.ID, b.Status)
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	info, err := insp.GetTaskInfo(q, jobs.JobID(b.ID, "req-1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := producer.TaskTimeout(call, 3); info.Timeout != want {
		t.Fatalf("task timeout %v, want %v: three tiers of 20m calls", info.Timeout, want)
	}
}
