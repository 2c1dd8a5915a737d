package main

import (
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/producer"
)

// `llmq enqueue` gives each job the task timeout of the configuration's
// call_timeout and fallbacks: three 20-minute tiers, which the fixed
// 35 minutes of before could not hold.
func TestEnqueueDerivesTheTaskTimeoutFromTheConfig(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, func(c *config.Config) {
		c.Upstream.CallTimeout = 20 * time.Minute
		c.Fallbacks = map[string][]string{"gpt-4o-mini": {"gpt-4.1-mini", "gpt-4.1-nano"}}
	})
	in := jsonl(1) + `{"custom_id":"own","model":"gpt-4o-mini","fallback":["a","b","c","d"],"messages":[{"role":"user","content":"x"}]}` + "\n"
	if out, errOut, code := p.run(in, "enqueue", "-", "--batch", "tmo"); code != 0 {
		t.Fatalf("enqueue: code %d %s %s", code, out, errOut)
	}
	insp := asynq.NewInspector(p.env.Opt)
	defer insp.Close()
	for id, tiers := range map[string]int{"tmo:c0": 3, "tmo:own": 5} {
		info, err := insp.GetTaskInfo(p.env.Queue, id)
		if err != nil {
			t.Fatal(err)
		}
		if want := producer.TaskTimeout(20*time.Minute, tiers); info.Timeout != want || info.Timeout < time.Duration(tiers)*20*time.Minute {
			t.Errorf("%s: task timeout %v, want %v (%d tiers of 20m calls)", id, info.Timeout, want, tiers)
		}
	}
}
