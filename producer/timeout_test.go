package producer_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
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
