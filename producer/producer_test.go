package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

func newProducer(t testing.TB, env *llmqtest.Env) *producer.Producer {
	t.Helper()
	p, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func queueSize(t *testing.T, env *llmqtest.Env) int {
	t.Helper()
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	queues, err := insp.Queues()
	if err != nil {
		t.Fatalf("list queues: %v", err)
	}
	if !slices.Contains(queues, env.Queue) {
		return 0 // nothing was ever enqueued
	}
	qi, err := insp.GetQueueInfo(env.Queue)
	if err != nil {
		t.Fatalf("read queue %s: %v", env.Queue, err)
	}
	return qi.Size
}

func TestEnqueueIsIdempotent(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx := context.Background()
	job := &jobs.Job{ID: "same", Body: json.RawMessage(`{"model":"m","messages":[{"role":"user","content":"x"}]}`)}
	id, err := p.Enqueue(ctx, job)
	if err != nil || id != "same" {
		t.Fatalf("first enqueue: %q %v", id, err)
	}
	id, err = p.Enqueue(ctx, job)
	if !errors.Is(err, producer.ErrDuplicate) || id != "same" {
		t.Fatalf("second enqueue: %q %v, want ErrDuplicate", id, err)
	}
	if n := queueSize(t, env); n != 1 {
		t.Fatalf("queue holds %d tasks, want 1", n)
	}
	gen, err := p.Enqueue(ctx, &jobs.Job{Body: job.Body})
	if err != nil || !strings.HasPrefix(gen, "job_") {
		t.Fatalf("enqueue without id: %q %v, want a generated job_ id", gen, err)
	}
}

func TestInvalidJobNeverReachesRedis(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	_, err := p.Enqueue(context.Background(), &jobs.Job{ID: "bad", Body: json.RawMessage(`{"model":"m","messages":[{"role":"robot","content":"x"}]}`)})
	var ve *jobs.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "messages[0].role") {
		t.Fatalf("err = %v, want a field-path validation error", err)
	}
	if n := queueSize(t, env); n != 0 {
		t.Fatalf("queue holds %d tasks after an invalid enqueue", n)
	}
}

func batchInput(n int, bad map[int]string) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		if line, ok := bad[i]; ok {
			b.WriteString(line + "\n")
			continue
		}
		fmt.Fprintf(&b, `{"custom_id":"c%d","model":"gpt-4o-mini","messages":[{"role":"user","content":"q %d"}]}`+"\n", i, i)
	}
	return b.String()
}

func TestBatchRefusedWholeWhenALineIsInvalid(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	in := batchInput(50, map[int]string{
		7:  `{"custom_id":"c7","model":"m","messages":[{"role":"user"}]}`,
		20: `{"custom_id":"c1","model":"m","messages":[{"role":"user","content":"dup"}]}`,
		33: `{broken`,
	})
	_, err := p.EnqueueBatch(context.Background(), strings.NewReader(in), producer.BatchID("b"))
	var be *producer.BatchError
	if !errors.As(err, &be) || !errors.Is(err, jobs.ErrInvalid) {
		t.Fatalf("err = %v, want *BatchError", err)
	}
	msg := err.Error()
	for _, want := range []string{"line 7: invalid job: messages[0].content: is required", "line 20: invalid job: custom_id: \"c1\" repeats line 1", "line 33: invalid job: (line)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if n := queueSize(t, env); n != 0 {
		t.Fatalf("queue holds %d tasks; a refused batch must enqueue nothing", n)
	}
}

func TestBatchEnqueueAndResubmit(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx := context.Background()
	var last int
	rep, err := p.EnqueueBatch(ctx, strings.NewReader(batchInput(300, nil)), producer.BatchID("b2"),
		producer.Progress(func(done, total int) { last = done }))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Jobs != 300 || rep.Enqueued != 300 || rep.Duplicates != 0 || last != 300 {
		t.Fatalf("report %+v progress %d", rep, last)
	}
	rep, err = p.EnqueueBatch(ctx, strings.NewReader(batchInput(300, nil)), producer.BatchID("b2"))
	if err != nil || rep.Enqueued != 0 || rep.Duplicates != 300 {
		t.Fatalf("resubmit: %+v %v, want 300 duplicates", rep, err)
	}
	st, err := p.Batch(ctx, "b2")
	if err != nil || st.Total != 300 || st.Pending() != 300 {
		t.Fatalf("batch status %+v %v, want total 300", st, err)
	}
	if n := queueSize(t, env); n != 300 {
		t.Fatalf("queue holds %d, want 300", n)
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	info, err := insp.GetTaskInfo(env.Queue, "b2:c42")
	if err != nil {
		t.Fatalf("job ids must be <batch>:<custom_id>: %v", err)
	}
	j, err := jobs.Decode(info.Payload)
	if err != nil || j.BatchID != "b2" || j.CustomID != "c42" {
		t.Fatalf("payload %+v %v", j, err)
	}
}

func BenchmarkEnqueueBatch(b *testing.B) {
	env := llmqtest.Redis(b)
	p, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	const n = 10000
	in := batchInput(n, nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.EnqueueBatch(context.Background(), strings.NewReader(in), producer.BatchID(fmt.Sprintf("bench%d", i))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "jobs/s")
}
