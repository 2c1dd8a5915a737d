package producer_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/worker"
)

// Each job's asynq task timeout leaves room for a whole call on every tier
// it may walk; before, every task got 35 minutes, which three 20-minute
// tiers outlast.
func TestTaskTimeoutCoversEveryTiersCall(t *testing.T) {
	env := llmqtest.Redis(t)
	const call = 20 * time.Minute
	p, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix),
		producer.WithCallTimeout(call), producer.WithFallbackTiers(2))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	def := newProducer(t, env) // no call timeout or tiers given
	ctx := context.Background()
	body := json.RawMessage(`{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}`)
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	for _, tc := range []struct {
		name     string
		p        *producer.Producer
		fallback []string
		tiers    int
	}{
		{"configured fallback tiers", p, nil, 3},
		{"the job's own list wins", p, []string{"gpt-4o-mini", "gpt-4.1-mini", "gpt-4o-mini"}, 3},
		{"a longer own list", p, []string{"a", "b", "c", "d"}, 5},
		{"defaults", def, nil, 1 + producer.DefaultFallbackTiers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.p.Enqueue(ctx, &jobs.Job{Body: body, Fallback: tc.fallback})
			if err != nil {
				t.Fatal(err)
			}
			info, err := insp.GetTaskInfo(env.Queue, id)
			if err != nil {
				t.Fatal(err)
			}
			callTimeout := call
			if tc.p == def {
				callTimeout = producer.DefaultCallTimeout
			}
			need := time.Duration(tc.tiers) * callTimeout
			if info.Timeout < need+time.Duration(tc.tiers)*producer.TierMargin {
				t.Fatalf("task timeout %v: %d tiers of %v calls need %v plus margins", info.Timeout, tc.tiers, callTimeout, need)
			}
			if want := producer.TaskTimeout(callTimeout, tc.tiers); info.Timeout != want {
				t.Fatalf("task timeout %v, want %v", info.Timeout, want)
			}
		})
	}
	// What the fixed timeout could not hold: three tiers of 20 minutes.
	if got := producer.TaskTimeout(call, 3); got <= 35*time.Minute {
		t.Fatalf("TaskTimeout(20m, 3) = %v", got)
	}
	if _, err := producer.New(env.Opt, producer.WithCallTimeout(0)); err == nil {
		t.Fatal("a zero call timeout was accepted")
	}
}

// A worker whose call timeout outlasts the task timeout a producer gave a
// job says so before the call, naming call_timeout; a job enqueued with the
// workers' call timeout gets no such warning.
func TestWorkerWarnsWhenTheTaskTimeoutCannotHoldItsCall(t *testing.T) {
	env := llmqtest.Redis(t)
	logs := &llmqtest.Buffer{}
	_, stop := runWorker(env.RedisURL(), env.Queue, env.Prefix, func(c *worker.Config) {
		c.CallTimeout = 30 * time.Minute
		c.Log = zerolog.New(logs)
	})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(id string, opts ...producer.Option) string {
		t.Helper()
		p, err := producer.New(env.Opt, append([]producer.Option{producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		before := len(logs.String())
		if _, err := p.Enqueue(ctx, &jobs.Job{ID: id, Body: helloBody}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(ctx, id); err != nil {
			t.Fatal(err)
		}
		return logs.String()[before:]
	}
	short := run("short", producer.WithCallTimeout(10*time.Minute), producer.WithFallbackTiers(0)) // 12m < 30m
	if !strings.Contains(short, `"event":"task_timeout_short"`) || !strings.Contains(short, `"call_timeout"`) || !strings.Contains(short, `"job_id":"short"`) {
		t.Fatalf("no task_timeout_short warning naming call_timeout for a 12m task timeout and a 30m call timeout:\n%s", short)
	}
	if ok := run("ok", producer.WithCallTimeout(30*time.Minute), producer.WithFallbackTiers(0)); strings.Contains(ok, "task_timeout_short") {
		t.Fatalf("a job enqueued with the workers' call timeout was warned about:\n%s", ok)
	}
}
