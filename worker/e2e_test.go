package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
)

func batchJSONL(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			fmt.Fprintf(&b, `{"custom_id":"c%d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %d"}],"max_tokens":32}}`+"\n", i, i)
		} else {
			fmt.Fprintf(&b, `{"custom_id":"c%d","model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %d"}],"max_completion_tokens":32}`+"\n", i, i)
		}
	}
	return b.String()
}

// Two workers drain a batch of 500: every job has exactly one result, the
// upstream is called once per job, and the export is complete OpenAI Batch
// output.
func TestEndToEndBatchTwoWorkers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fakeupstream.Config{Latency: 2 * time.Millisecond})
	h.startWorker(workerOpts{})
	h.startWorker(workerOpts{})
	ctx := context.Background()
	const n = 500
	rep, err := h.prod.EnqueueBatch(ctx, strings.NewReader(batchJSONL(n)), producer.BatchID("e2e"))
	if err != nil || rep.Enqueued != n {
		t.Fatalf("enqueue: %+v %v", rep, err)
	}
	h.waitFor("the batch to finish", 60*time.Second, func() bool {
		st, err := h.prod.Batch(ctx, "e2e")
		return err == nil && st.Done()
	})
	st, _ := h.prod.Batch(ctx, "e2e")
	if st.Succeeded != n || st.Failed != 0 {
		t.Fatalf("batch %+v", st)
	}
	if got := h.fake.Stats().Requests; got != n {
		t.Errorf("upstream saw %d requests for %d jobs", got, n)
	}
	var out bytes.Buffer
	seen := map[string]bool{}
	err = h.store.Export(ctx, "e2e", func(id string, r *jobs.Result) error {
		if r == nil {
			return fmt.Errorf("job %s has no result", id)
		}
		b, err := json.Marshal(r.OutputLine())
		out.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ol struct {
			ID       string `json:"id"`
			CustomID string `json:"custom_id"`
			Response struct {
				StatusCode int             `json:"status_code"`
				RequestID  string          `json:"request_id"`
				Body       json.RawMessage `json:"body"`
			} `json:"response"`
			Error *json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &ol); err != nil {
			t.Fatalf("line %d is not JSON: %v", i+1, err)
		}
		if want := fmt.Sprintf("c%d", i); ol.CustomID != want {
			t.Fatalf("line %d: custom_id %q, want %q (input order)", i+1, ol.CustomID, want)
		}
		var body struct {
			Object  string `json:"object"`
			Choices []any  `json:"choices"`
			Usage   struct {
				TotalTokens int `json:"total_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(ol.Response.Body, &body); err != nil || ol.Response.StatusCode != 200 || ol.Response.RequestID == "" ||
			body.Object != "chat.completion" || len(body.Choices) != 1 || body.Usage.TotalTokens == 0 || ol.Error != nil {
			t.Fatalf("line %d not a complete success line: %s", i+1, line)
		}
		if seen[ol.CustomID] {
			t.Fatalf("custom_id %s exported twice", ol.CustomID)
		}
		seen[ol.CustomID] = true
	}
	if len(seen) != n {
		t.Fatalf("exported %d lines, want %d", len(seen), n)
	}
}
