package hold_test

import (
	"context"
	"testing"
	"time"

	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/llmqtest"
)

func TestHoldLifecycle(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	a := hold.NewStore(env.Client, env.Prefix)
	b := hold.NewStore(env.Client, env.Prefix) // another process
	if st, err := a.Get(ctx, "acct"); err != nil || st != nil {
		t.Fatalf("fresh Get = %+v, %v", st, err)
	}
	st := hold.State{Account: "acct", Class: "auth", Reason: "upstream 401", KeyFingerprint: "fp-old", Since: time.Unix(100, 0).UTC()}
	if created, err := a.Set(ctx, st); err != nil || !created {
		t.Fatalf("first Set: %v %v", created, err)
	}
	if created, err := b.Set(ctx, hold.State{Account: "acct", Class: "quota"}); err != nil || created {
		t.Fatalf("second Set must not replace the standing hold: %v %v", created, err)
	}
	got, err := b.Get(ctx, "acct")
	if err != nil || got == nil || got.Class != "auth" || got.KeyFingerprint != "fp-old" {
		t.Fatalf("other process sees %+v, %v", got, err)
	}
	if lifted, err := b.ClearIf(ctx, "acct", "fp-other"); err != nil || lifted {
		t.Fatalf("ClearIf with another fingerprint lifted the hold: %v %v", lifted, err)
	}
	if lifted, err := b.ClearIf(ctx, "acct", "fp-old"); err != nil || !lifted {
		t.Fatalf("ClearIf with the failing key's fingerprint: %v %v", lifted, err)
	}
	if cleared, err := a.Clear(ctx, "acct"); err != nil || cleared {
		t.Fatalf("Clear after lift: %v %v", cleared, err)
	}
}
