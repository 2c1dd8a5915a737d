package batchapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llmq/llmq/batchapi"
)

// An input file deleted while its batch is being enqueued fails the batch
// (file_not_found), and the jobs already queued are removed: none of them
// runs, and is paid for, for a batch that will never deliver its output.
func TestFileDeletedMidEnqueueLeavesNothingQueued(t *testing.T) {
	c, env := newAPI(t, 50_000)
	const n = 30_000 // several chunks, seconds of enqueueing
	var in strings.Builder
	for i := range n {
		in.WriteString(line(i) + "\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(in.String()), "in.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	pending := "asynq:{" + batchapi.TenantQueue(env.Queue, "alice") + "}:pending"
	// Delete the file once the second pass has queued some jobs.
	for {
		if ctx.Err() != nil {
			t.Fatal("no job was ever queued")
		}
		if queued, _ := env.Client.LLen(ctx, pending).Result(); queued > 0 {
			if queued == n {
				t.Fatalf("all %d jobs queued before the file could be deleted: make the input larger", n)
			}
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := c.Files.Delete(ctx, f.ID); err != nil {
		t.Fatal(err)
	}
	for b.Status == openai.BatchStatusValidating || b.Status == openai.BatchStatusInProgress {
		if ctx.Err() != nil {
			t.Fatalf("batch %s still %s", b.ID, b.Status)
		}
		time.Sleep(50 * time.Millisecond)
		if b, err = c.Batches.Get(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	if b.Status != openai.BatchStatusFailed || len(b.Errors.Data) == 0 || b.Errors.Data[0].Code != "file_not_found" {
		t.Fatalf("batch is %s with errors %+v, want failed with file_not_found", b.Status, b.Errors.Data)
	}
	if queued, err := env.Client.LLen(ctx, pending).Result(); err != nil || queued != 0 {
		t.Fatalf("%d jobs still queued for the failed batch (%v)", queued, err)
	}
}
