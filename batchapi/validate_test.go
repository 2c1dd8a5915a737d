package batchapi_test

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

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/llmqtest"
)

const testKey = "sk-validate-test-key-0123456789"

// newAPI serves a Service on a real HTTP port against the test's Redis and
// returns an official SDK client of it; no worker runs.
func newAPI(t *testing.T, maxRequests int) (openai.Client, *llmqtest.Env) {
	t.Helper()
	env := llmqtest.Redis(t)
	svc, err := batchapi.New(batchapi.Config{Redis: env.Client, RedisOpt: env.Opt, Prefix: env.Prefix, Queue: env.Queue,
		Clients: []batchapi.Client{{Name: "alice", Key: testKey}}, MaxRequests: maxRequests, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(func() {
		srv.Close()
		svc.Close()
		q := batchapi.TenantQueue(env.Queue, "alice")
		ctx := context.Background()
		if keys, _ := env.Client.Keys(ctx, "asynq:{"+q+"}*").Result(); len(keys) > 0 {
			env.Client.Del(ctx, keys...)
		}
		env.Client.SRem(ctx, "asynq:queues", q)
	})
	return openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey(testKey), option.WithMaxRetries(0)), env
}

func line(i int) string {
	return fmt.Sprintf(`{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %d"}]}}`, i, i)
}

// run uploads content, creates a batch on it and returns it once it left
// validating.
func run(t *testing.T, c openai.Client, content string) *openai.Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(content), "in.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	for b.Status == openai.BatchStatusValidating {
		if ctx.Err() != nil {
			t.Fatalf("batch %s still validating", b.ID)
		}
		if b, err = c.Batches.Get(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// The API's own line rules (custom_id required, no llmq job id), llmq's
// (a repeated custom_id, an explicit batch_id), and its bounds: more
// requests than MaxRequests, no request at all, more problems than
// MaxBatchErrors. Each fails the batch with its code and line; nothing is
// enqueued.
func TestValidationProblems(t *testing.T) {
	c, env := newAPI(t, 1500)
	lines := []string{line(0), line(1), line(2), line(3), line(4)}
	lines[1] = strings.Replace(lines[1], `"custom_id":"req-1",`, ``, 1)
	lines[2] = strings.Replace(lines[2], `{"custom_id"`, `{"id":"mine","custom_id"`, 1)
	lines[3] = strings.Replace(lines[3], `"req-3"`, `"req-0"`, 1)
	lines[4] = strings.Replace(lines[4], `{"custom_id"`, `{"batch_id":"other","custom_id"`, 1)
	b := run(t, c, strings.Join(lines, "\n")+"\n")
	got := map[int64]string{}
	for _, e := range b.Errors.Data {
		got[e.Line] += e.Code + ":" + e.Param + " "
	}
	want := map[int64]string{2: "missing_required_parameter:custom_id ", 3: "invalid_request:id ", 4: "duplicate_custom_id:custom_id ", 5: "invalid_request:batch_id "}
	if b.Status != openai.BatchStatusFailed || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("batch %s: errors %v, want %v", b.Status, got, want)
	}

	var many strings.Builder
	for i := range 1501 {
		many.WriteString(line(i) + "\n")
	}
	b = run(t, c, many.String())
	if b.Status != openai.BatchStatusFailed || len(b.Errors.Data) != 1 || b.Errors.Data[0].Code != batchapi.CodeTooManyRequests {
		t.Errorf("1501 requests at MaxRequests 1500: %s", b.RawJSON())
	}

	b = run(t, c, "\n\n")
	if b.Status != openai.BatchStatusFailed || len(b.Errors.Data) != 1 || b.Errors.Data[0].Code != batchapi.CodeEmptyFile {
		t.Errorf("an empty file: %s", b.RawJSON())
	}

	// More problems than MaxBatchErrors: the first are listed with their
	// lines, one more entry counts the rest.
	bad := batchapi.MaxBatchErrors + 250
	b = run(t, c, strings.Repeat("{broken\n", bad))
	errs := b.Errors.Data
	if b.Status != openai.BatchStatusFailed || len(errs) != batchapi.MaxBatchErrors+1 {
		t.Fatalf("%d broken lines: status %s, %d errors", bad, b.Status, len(errs))
	}
	if errs[0].Line != 1 || errs[batchapi.MaxBatchErrors-1].Line != batchapi.MaxBatchErrors || errs[0].Code != batchapi.CodeInvalidJSONLine {
		t.Errorf("first errors %+v … %+v", errs[0], errs[batchapi.MaxBatchErrors-1])
	}
	if last := errs[batchapi.MaxBatchErrors]; last.Code != batchapi.CodeTooManyErrors || !strings.HasPrefix(last.Message, "250 more problems") {
		t.Errorf("last error %+v, want %s counting 250", last, batchapi.CodeTooManyErrors)
	}

	q := batchapi.TenantQueue(env.Queue, "alice")
	if n, _ := env.Client.Exists(context.Background(), "asynq:{"+q+"}:pending").Result(); n != 0 {
		t.Error("a job of a failed batch was enqueued")
	}
	// A valid file goes in_progress with every request queued.
	b = run(t, c, many.String()[:strings.Index(many.String(), line(1500))])
	if b.Status != openai.BatchStatusInProgress || b.RequestCounts.Total != 1500 {
		t.Errorf("1500 requests: %s", b.RawJSON())
	}
	if n, _ := env.Client.LLen(context.Background(), "asynq:{"+q+"}:pending").Result(); n != 1500 {
		t.Errorf("%d jobs pending, want 1500", n)
	}
}
