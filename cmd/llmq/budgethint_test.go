package main

import (
	"errors"
	"testing"

	"github.com/llmq/llmq/ratelimit"
)

// The library's error names the model; the command adds the settings that
// cure it, and other errors pass unchanged.
func TestBudgetHint(t *testing.T) {
	err := budgetHint(&ratelimit.NoBudgetError{Model: "gpt-x"})
	want := `ratelimit: no budget for model "gpt-x" and no "default" budget: add budgets.gpt-x (or budgets.default: {} for unlimited)`
	if err.Error() != want || !errors.Is(err, ratelimit.ErrNoBudget) {
		t.Errorf("budgetHint = %q, want %q (still an ErrNoBudget)", err, want)
	}
	other := errors.New("redis down")
	if got := budgetHint(other); got != other {
		t.Errorf("budgetHint(other) = %v, want it unchanged", got)
	}
}
