package main

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/ratelimit"
)

// Issue 10 item 11: a second Ctrl-C was ignored; the worker went on waiting
// for its shutdown timeout. The second signal stops the process at once.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Faults: "hang"}, func(c *config.Config) {
		c.Worker.ShutdownTimeout = 2 * time.Minute
	})
	w := p.start("worker", "--concurrency", "1")
	if _, errOut, code := p.runWithin(time.Minute, jsonl(1), "enqueue", "-", "--batch", "sig"); code != 0 {
		t.Fatalf("enqueue: %d %s", code, errOut)
	}
	waitFor(t, "the job's call to hang upstream", 30*time.Second, func() bool { return p.fake.Stats().Requests >= 1 })
	if err := w.w.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.w.Done():
		t.Fatal("the worker exited on the first SIGINT although its call hangs: the test needs a call that outlasts it")
	case <-time.After(500 * time.Millisecond):
	}
	sent := time.Now()
	if err := w.w.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.w.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the worker ignored the second SIGINT (still waiting for its 2 m shutdown timeout)")
	}
	if !strings.Contains(w.w.Log(), "second interrupt: stopping now") {
		t.Errorf("no word of the second signal in the log:\n%s", w.w.Tail(5))
	}
	// Generous for a loaded machine; the old code took its shutdown path
	// (over 14 s here, up to the 2 m timeout).
	if took := time.Since(sent); took > 8*time.Second {
		t.Errorf("the worker took %v to exit after the second SIGINT, want at once", took.Round(time.Millisecond))
	}
}

// New-user item: with Redis down, every command says so in one line, the
// password masked, instead of go-redis warnings and a bare dial error.
func TestRedisDownOneLine(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p.vars = append(p.vars, "LLMQ_REDIS_URL=redis://:hunter2-secret@"+addr+"/0")
	head, tail := "llmq: Redis at redis://:", "@"+addr+"/0 does not answer (LLMQ_REDIS_URL)\n"
	for _, args := range [][]string{{"enqueue", "-"}, {"dlq", "list"}, {"status"}, {"results", "--batch", "x"}, {"resume"}, {"worker"}} {
		out, errOut, code := p.runWithin(time.Minute, jsonl(1), args...)
		if code == 0 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, head) || !strings.HasSuffix(errOut, tail) || strings.Contains(errOut, "hunter2") {
			t.Errorf("llmq %v: exit %d stdout %q stderr %q; want exit 1 and only %q<masked>%q", args, code, out, errOut, head, tail)
		}
	}
	if out, errOut, code := p.runWithin(time.Minute, "", "config"); code != 0 || strings.Contains(out+errOut, "hunter2") {
		t.Errorf("config needs no Redis and shows no password: exit %d %s %s", code, out, errOut)
	}
}

// Issue 10 item 11: `llmq status` showed a budget named "default" instead of
// the buckets in use.
func TestStatusShowsBudgetsInUse(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, func(c *config.Config) {
		c.Budgets = map[string]config.Budget{ratelimit.DefaultModel: {RPM: 6000, TPM: 600000}, "gpt-4o": {RPM: 100, TPM: 10000}}
	})
	out, errOut, code := p.runWithin(time.Minute, "", "status")
	if code != 0 || !strings.Contains(out, "budgets: none in use") {
		t.Fatalf("status before any call: exit %d\n%s%s", code, out, errOut)
	}
	p.start("worker", "--concurrency", "2")
	if _, errOut, code := p.runWithin(time.Minute, jsonl(3), "enqueue", "-", "--batch", "st", "--wait"); code != 0 {
		t.Fatalf("enqueue: %d %s", code, errOut)
	}
	out, errOut, code = p.runWithin(time.Minute, "", "status")
	if code != 0 {
		t.Fatalf("status: exit %d %s", code, errOut)
	}
	// The rows of the BUDGET table only (the BREAKER table below it names
	// models too).
	var rows []string
	inBudget := false
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && f[0] == "BUDGET":
			inBudget = true
		case len(f) == 0:
			inBudget = false
		case inBudget && len(f) >= 4:
			rows = append(rows, strings.Join(f[:4], " "))
		}
	}
	if len(rows) != 1 || rows[0] != "gpt-4o-mini default 6000 600000" {
		t.Fatalf("budget rows %q, want only the bucket in use: gpt-4o-mini under the default budget\n%s", rows, out)
	}
}
