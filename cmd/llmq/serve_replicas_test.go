package main

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/fakeupstream"
)

// Three `llmq serve` processes share one Redis (and key prefix), as
// replicas behind a load balancer do: a file uploaded on one is a batch on
// another and is polled, cancelled and downloaded on a third. Every replica
// serves the same bytes; two replicas cancelling at once leave one true
// account of the batch.
func TestServeReplicas(t *testing.T) {
	p := newServeEnv(t, fakeupstream.Config{Latency: 150 * time.Millisecond, Faults: "400,400"}, nil)
	p.start("worker", "--concurrency", "2")
	var reps [3]openai.Client
	for i := range reps {
		reps[i] = sdk(p.startServe(), aliceKey)
	}
	a, b, c := reps[0], reps[1], reps[2]

	// A batch to completion: upload on a, create on b, poll on c.
	input := batchInput(12)
	f := upload(t, a, input)
	for i, r := range reps {
		if got := download(t, r, f.ID); string(got) != input {
			t.Fatalf("replica %d serves the input file as %d bytes, want %d", i, len(got), len(input))
		}
	}
	done := poll(t, c, createBatch(t, b, f.ID).ID, 90*time.Second)
	if rc := done.RequestCounts; done.Status != openai.BatchStatusCompleted || rc.Total != 12 || rc.Completed != 10 || rc.Failed != 2 {
		t.Fatalf("batch: %s", done.RawJSON())
	}
	for _, id := range []string{done.OutputFileID, done.ErrorFileID} {
		first := download(t, a, id)
		for i, r := range reps {
			if got := download(t, r, id); !bytes.Equal(got, first) {
				t.Fatalf("file %s: replica %d serves other bytes (%d vs %d)", id, i, len(got), len(first))
			}
		}
	}

	// A batch cancelled from two replicas at once, while it runs.
	const n = 60
	f = upload(t, c, batchInput(n))
	id := createBatch(t, a, f.ID).ID
	waitFor(t, "a few requests to complete", 60*time.Second, func() bool {
		got, err := b.Batches.Get(ctx(t), id)
		return err == nil && got.RequestCounts.Completed >= 3
	})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	start := make(chan struct{})
	for i, r := range []openai.Client{b, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got, err := r.Batches.Cancel(ctx(t), id)
			if err == nil && got.Status != openai.BatchStatusCancelling && got.Status != openai.BatchStatusCancelled {
				err = fmt.Errorf("status %s after cancel", got.Status)
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("cancel %d: %v", i, err)
		}
	}
	cancelled := poll(t, a, id, 60*time.Second)
	rc := cancelled.RequestCounts
	if cancelled.Status != openai.BatchStatusCancelled || rc.Total != n || rc.Completed+rc.Failed != n || rc.Completed < 3 || rc.Failed == 0 {
		t.Fatalf("cancelled batch: %s", cancelled.RawJSON())
	}
	out, errFile := download(t, b, cancelled.OutputFileID), download(t, c, cancelled.ErrorFileID)
	for i, r := range reps {
		if !bytes.Equal(download(t, r, cancelled.OutputFileID), out) || !bytes.Equal(download(t, r, cancelled.ErrorFileID), errFile) {
			t.Fatalf("replica %d serves other bytes of the cancelled batch's files", i)
		}
	}
	// The counts are the files' lines, every request is in exactly one of
	// them, and the results store agrees.
	t.Logf("cancelled: %d completed, %d cancelled", rc.Completed, rc.Failed)
	okLines, errLines := outputLines(t, out), outputLines(t, errFile)
	if int64(len(okLines)) != rc.Completed || int64(len(errLines)) != rc.Failed {
		t.Fatalf("%d output and %d error lines for counts %+v", len(okLines), len(errLines), rc)
	}
	var ids []string
	for _, l := range okLines {
		ids = append(ids, l.CustomID)
	}
	for _, l := range errLines {
		if l.Error == nil || l.Error.Code != batchapi.CodeBatchCancelled {
			t.Fatalf("error line %+v, want %s", l, batchapi.CodeBatchCancelled)
		}
		ids = append(ids, l.CustomID)
	}
	slices.Sort(ids)
	if ids = slices.Compact(ids); len(ids) != n {
		t.Fatalf("%d distinct requests in the files, want %d", len(ids), n)
	}
	_, stderr, _ := p.run("", "results", "--batch", id)
	if want := fmt.Sprintf("%d done, 0 failed, %d pending of %d", rc.Completed, rc.Failed, n); !strings.Contains(stderr, want) {
		t.Errorf("llmq results --batch: %s, want %q", stderr, want)
	}
	q := batchapi.TenantQueue(p.env.Queue, "alice")
	for _, state := range []string{"pending", "active"} {
		if n, _ := p.env.Client.LLen(ctx(t), "asynq:{"+q+"}:"+state).Result(); n != 0 {
			t.Errorf("%d jobs %s after the cancel", n, state)
		}
	}
	for _, state := range []string{"scheduled", "retry"} {
		if n, _ := p.env.Client.ZCard(ctx(t), "asynq:{"+q+"}:"+state).Result(); n != 0 {
			t.Errorf("%d jobs %s after the cancel", n, state)
		}
	}
	// A third cancel, on the finished batch: the same batch, no change.
	again, err := a.Batches.Cancel(ctx(t), id)
	if err != nil || again.Status != openai.BatchStatusCancelled || again.RequestCounts.Completed != rc.Completed || again.RequestCounts.Failed != rc.Failed {
		t.Errorf("cancel after cancelled: %v %s", err, again.RawJSON())
	}
}
