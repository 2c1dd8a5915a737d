package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// An operator sees a dead letter, reads why, and re-runs it once the cause
// is fixed; the job's failed result is replaced by its success.
func TestDLQListShowRequeue(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Faults: "400,400"}, nil)
	p.start("worker", "--concurrency", "2")
	if _, errOut, code := p.run(jsonl(2), "enqueue", "-", "--batch", "dlq", "--wait"); code != exitJobsFailed {
		t.Fatalf("enqueue --wait: code %d %s", code, errOut)
	}
	out, errOut, code := p.run("", "dlq", "list")
	if code != 0 || !strings.Contains(out, "dlq:c0") || !strings.Contains(out, "dead_letter: upstream 400 invalid_request_error") {
		t.Fatalf("dlq list: code %d\n%s%s", code, out, errOut)
	}
	out, _, code = p.run("", "dlq", "show", "dlq:c0")
	var shown struct {
		State     string         `json:"state"`
		LastError string         `json:"last_error"`
		Job       map[string]any `json:"job"`
		Result    jobs.Result    `json:"result"`
	}
	if err := json.Unmarshal([]byte(out), &shown); code != 0 || err != nil {
		t.Fatalf("dlq show: code %d err %v\n%s", code, err, out)
	}
	if shown.State != "archived" || shown.Job["model"] != "gpt-4o-mini" || shown.Result.Status != jobs.StatusFailed || shown.Result.Error.Status != 400 {
		t.Errorf("dlq show: %+v", shown)
	}
	out, errOut, code = p.run("", "dlq", "requeue", "dlq:c0")
	if code != 0 || !strings.Contains(out, "requeued 1 job") {
		t.Fatalf("dlq requeue: code %d %s %s", code, out, errOut)
	}
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	waitFor(t, "the requeued job to succeed", 20*time.Second, func() bool {
		r, err := store.Get(ctx(t), "dlq:c0")
		return err == nil && r.Status == jobs.StatusSucceeded
	})
	st, err := store.Batch(ctx(t), "dlq")
	if err != nil || st.Succeeded != 1 || st.Failed != 1 {
		t.Errorf("batch after requeue %+v %v, want 1 succeeded 1 failed", st, err)
	}
	out, _, code = p.run("", "dlq", "delete", "--all")
	if code != 0 || !strings.Contains(out, "deleted 1 job") {
		t.Errorf("dlq delete --all: %d %s", code, out)
	}
	if out, _, _ := p.run("", "dlq", "list"); strings.Contains(out, "dlq:c1") {
		t.Errorf("dlq list after delete:\n%s", out)
	}
}

// A quota hold stops the fleet; `llmq status` shows it and `llmq resume`
// lifts it.
func TestResumeLiftsQuotaHold(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Faults: "quotax1000"}, nil)
	p.start("worker", "--concurrency", "2")
	if _, errOut, code := p.run(jsonl(3), "enqueue", "-", "--batch", "hold"); code != 0 {
		t.Fatalf("enqueue: %s", errOut)
	}
	holds := hold.NewStore(p.env.Client, p.env.Prefix)
	waitFor(t, "the hold", 20*time.Second, func() bool {
		st, _ := holds.Get(ctx(t), "default")
		return st != nil
	})
	out, _, _ := p.run("", "status")
	if !strings.Contains(out, "HOLD: account \"default\"") || !strings.Contains(out, "insufficient_quota") {
		t.Errorf("status does not show the hold:\n%s", out)
	}
	if err := p.fake.SetFaults(""); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := p.run("", "resume")
	if code != 0 || !strings.Contains(out, "resumed") {
		t.Fatalf("resume: %d %s %s", code, out, errOut)
	}
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	waitFor(t, "the batch after resume", 20*time.Second, func() bool {
		st, err := store.Batch(ctx(t), "hold")
		return err == nil && st.Done() && st.Succeeded == 3
	})
}
