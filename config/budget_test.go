package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The budget settings of issue 4: max wait (default 5 s), refund of unused
// tokens (default off, as OpenAI), transit headroom (default 100 ms) and the
// request burst, read from the file and printed by `llmq config`.
func TestBudgetSettings(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.BudgetMaxWait != 5*time.Second || c.BudgetRefundUnused || c.BudgetTransit != 100*time.Millisecond {
		t.Errorf("defaults: budget_max_wait %v, budget_refund_unused %v, budget_transit %v; want 5s, false, 100ms", c.BudgetMaxWait, c.BudgetRefundUnused, c.BudgetTransit)
	}
	path := filepath.Join(t.TempDir(), "llmq.yaml")
	yml := "budget_max_wait: 20s\nbudget_refund_unused: true\nbudget_transit: 250ms\nbudgets:\n  default: {rpm: 600, tpm: 60000, burst: 4000, burst_requests: 10}\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(env(map[string]string{"LLMQ_CONFIG": path})); err != nil {
		t.Fatal(err)
	}
	if c.BudgetMaxWait != 20*time.Second || !c.BudgetRefundUnused || c.BudgetTransit != 250*time.Millisecond {
		t.Errorf("file: budget_max_wait %v, budget_refund_unused %v, budget_transit %v; want 20s, true, 250ms", c.BudgetMaxWait, c.BudgetRefundUnused, c.BudgetTransit)
	}
	if got := c.Budgets["default"]; got != (Budget{RPM: 600, TPM: 60000, Burst: 4000, BurstRequests: 10}) {
		t.Errorf("budget = %+v", got)
	}
	var out bytes.Buffer
	if err := c.Print(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"budget_max_wait: 20s", "budget_refund_unused: true", "budget_transit: 250ms", "burst_requests: 10", "tpm: 60000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("llmq config output lacks %q:\n%s", want, out.String())
		}
	}
	c.BudgetMaxWait = 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "budget_max_wait") {
		t.Errorf("Validate with budget_max_wait 0 = %v, want an error naming it", err)
	}
}
