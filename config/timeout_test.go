package config

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/worker"
)

// The producer restates defaults it shares with the workers (it does not
// import them): they must agree.
func TestProducerDefaultsAreTheWorkers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"call timeout", producer.DefaultCallTimeout, worker.DefaultCallTimeout},
		{"queue", producer.DefaultQueue, worker.DefaultQueue},
		{"prefix", producer.DefaultPrefix, worker.DefaultPrefix},
		{"attempts", producer.DefaultAttempts, policy.DefaultAttempts},
		{"retention", producer.DefaultRetention, DefaultRetention},
		{"result TTL", producer.DefaultResultTTL, worker.DefaultResultTTL},
	} {
		if c.got != c.want {
			t.Errorf("producer's default %s %v, the workers' %v", c.name, c.got, c.want)
		}
	}
}

// The task timeout llmq's producers give a job follows call_timeout and
// the fallbacks; `llmq config` shows it.
func TestTaskTimeoutFollowsCallTimeoutAndFallbacks(t *testing.T) {
	c := loadYAML(t, "upstream: {call_timeout: 20m}\nfallbacks:\n  gpt-4o: [gpt-4o-mini, gpt-4.1-mini, gpt-4o-mini]\n  o3: [o4-mini]\n")
	if n := c.FallbackTiers(); n != 2 {
		t.Fatalf("FallbackTiers = %d, want 2 (gpt-4o's list, without the repeat)", n)
	}
	want := producer.TaskTimeout(20*time.Minute, 3)
	if got := c.TaskTimeout(); got != want || got < 3*20*time.Minute {
		t.Fatalf("TaskTimeout = %v, want %v: three whole 20m calls", got, want)
	}
	var out bytes.Buffer
	if err := c.Print(&out); err != nil {
		t.Fatal(err)
	}
	if line := "# task timeout: " + want.String() + " per job"; !strings.Contains(out.String(), line) {
		t.Fatalf("llmq config lacks %q:\n%s", line, out.String())
	}
	if d := Default(); d.FallbackTiers() != 0 || d.TaskTimeout() != producer.TaskTimeout(DefaultCallTimeout, 1) {
		t.Fatalf("defaults: %d fallback tiers, task timeout %v", d.FallbackTiers(), d.TaskTimeout())
	}
}

// A blocking budget wait longer than a tier's margin in the task timeout
// could get a call cancelled by asynq: refused, naming the field.
func TestBudgetMaxWaitBeyondTheTierMarginIsRefused(t *testing.T) {
	c := Default()
	c.BudgetMaxWait = MaxBudgetMaxWait
	if err := c.Validate(); err != nil {
		t.Fatalf("budget_max_wait %v refused: %v", c.BudgetMaxWait, err)
	}
	c.BudgetMaxWait = 2 * time.Minute
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "budget_max_wait") {
		t.Fatalf("Validate = %v, want it to refuse budget_max_wait 2m", err)
	}
}
