package producer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// FuzzEnqueueBatch feeds arbitrary JSONL to EnqueueBatch against the real
// Redis. A batch is either refused whole — a *producer.BatchError whose
// every line problem names a field path (or is a line too long), or the
// plain refusal of an input without jobs — or accepted whole, and then
// every task it put in the queue is a job the worker decodes, in the batch,
// with the id the batch promised. The seed corpus is below plus
// testdata/fuzz/FuzzEnqueueBatch/.
func FuzzEnqueueBatch(f *testing.F) {
	env := llmqtest.Redis(f)
	p, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix), producer.WithParallelism(4))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	insp := asynq.NewInspector(env.Opt)
	f.Cleanup(func() { insp.Close() })
	line := func(id, extra string) string {
		return `{"custom_id":"` + id + `","model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]` + extra + "}\n"
	}
	for _, s := range []string{
		line("a", "") + line("b", `,"max_tokens":5`),
		`{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"x"}]}}` + "\n",
		line("a", "") + line("a", ""),
		line("a", `,"batch_id":"other"`),
		line("a", `,"MODEL":5`),
		line("a", "") + "not json\n" + line("b", `,"n":"2"`),
		"\n\n",
		"",
		line("", ""),
		`{"model":"m","messages":[{"role":"user","content":"x"}]}` + "\n" + `{"model":"m","messages":[{"role":"user","content":"y"}]}`,
	} {
		f.Add([]byte(s))
	}
	var seq atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		batch := fmt.Sprintf("fz%d", seq.Add(1))
		rep, err := p.EnqueueBatch(ctx, bytes.NewReader(data), producer.BatchID(batch))
		if err != nil {
			requireBatchRefusal(t, err)
			if _, berr := p.Batch(ctx, batch); berr == nil {
				t.Fatalf("a refused batch left records in Redis")
			}
			return
		}
		if rep.Enqueued != rep.Jobs || rep.Duplicates != 0 {
			t.Fatalf("fresh batch: %+v", rep)
		}
		n := 0
		err = p.Store().Export(ctx, batch, func(id string, _ *jobs.Result) error {
			n++
			info, err := insp.GetTaskInfo(env.Queue, id)
			if err != nil {
				return fmt.Errorf("job %s listed in the batch has no task: %w", id, err)
			}
			j, err := jobs.Decode(info.Payload)
			if err != nil {
				return fmt.Errorf("the worker cannot decode accepted job %s: %w", id, err)
			}
			if j.ID != id || j.BatchID != batch {
				return fmt.Errorf("task %s holds job %q of batch %q", id, j.ID, j.BatchID)
			}
			if _, err := j.Request(); err != nil {
				return fmt.Errorf("accepted job %s: %w", id, err)
			}
			return insp.DeleteTask(env.Queue, id) // keep the queue small over a long run
		})
		if err != nil {
			t.Fatal(err)
		}
		if n != rep.Jobs {
			t.Fatalf("batch lists %d jobs, report says %d", n, rep.Jobs)
		}
	})
}

// requireBatchRefusal fails unless err refuses the batch with field paths.
func requireBatchRefusal(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, jobs.ErrInvalid) {
		t.Fatalf("refusal is not a jobs.ErrInvalid: %T %v", err, err)
	}
	var be *producer.BatchError
	if !errors.As(err, &be) {
		return // an input without jobs: refused as a whole
	}
	if be.Invalid == 0 || len(be.Lines) == 0 {
		t.Fatalf("BatchError without lines: %v", err)
	}
	for _, le := range be.Lines {
		if errors.Is(le, jobs.ErrLineTooLong) {
			continue
		}
		var ve *jobs.ValidationError
		if !errors.As(le.Err, &ve) || len(ve.Problems) == 0 {
			t.Fatalf("line %d refused without field paths: %v", le.Line, le.Err)
		}
		for _, pr := range ve.Problems {
			if pr.Path == "" {
				t.Fatalf("line %d: problem without a path: %q", le.Line, pr.Message)
			}
		}
	}
}
