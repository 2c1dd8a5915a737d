package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// binPath is the llmq binary built once for the process-level tests.
var binPath string

func TestMain(m *testing.M) { fleet.TestMain(m, &binPath) }

// procEnv is the environment of llmq processes in one test: its own queue,
// key prefix and fake upstream, and the fleet harness running llmq.
type procEnv struct {
	t     *testing.T
	env   *llmqtest.Env
	fake  *fakeupstream.Server
	fleet *fleet.Fleet
	// vars are added to the environment of the commands run (the last
	// value of a variable wins).
	vars []string
}

// newProcEnv sets up a test's processes: settings are the harness's test
// settings (short delays, retry base 20 ms, cap 200 ms), changed by mod
// when not nil.
func newProcEnv(t *testing.T, fcfg fakeupstream.Config, mod func(*config.Config)) *procEnv {
	t.Helper()
	env := llmqtest.Redis(t)
	fake, err := fakeupstream.New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake.Handler())
	t.Cleanup(func() { fake.Close(); srv.Close() })
	s := fleet.Settings(env.RedisURL(), srv.URL+"/v1", env.Prefix, env.Queue)
	s.Worker.PollInterval, s.Worker.HoldRecheck = 50*time.Millisecond, 200*time.Millisecond
	s.Retry.Base, s.Retry.Cap = 20*time.Millisecond, 200*time.Millisecond
	// Workers of parallel tests must not contend for one metrics port.
	s.Worker.MetricsAddr = "127.0.0.1:0"
	if mod != nil {
		mod(&s)
	}
	f, err := fleet.New(fleet.Config{Bin: binPath, Dir: t.TempDir(), Settings: s, APIKey: "sk-proc-test-key-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return &procEnv{t: t, env: env, fake: fake, fleet: f}
}

// run runs llmq to completion and returns stdout, stderr and the exit code.
func (p *procEnv) run(stdin string, args ...string) (string, string, int) {
	p.t.Helper()
	cmd := p.fleet.Command(context.Background(), args...)
	cmd.Env = append(cmd.Env, p.vars...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	case err != nil:
		p.t.Fatalf("run llmq %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

// proc is a running llmq worker.
type proc struct {
	w    *fleet.Worker
	logs fmt.Stringer // its log, readable while it runs
}

// logView reads a worker's log on each String.
type logView struct{ w *fleet.Worker }

func (l logView) String() string { return l.w.Log() }

// start runs `llmq worker args...` (args[0] must be "worker") and returns
// once it has registered; the test's end kills it.
func (p *procEnv) start(args ...string) *proc {
	p.t.Helper()
	if len(args) == 0 || args[0] != "worker" {
		p.t.Fatalf("start %v: only `llmq worker` runs in the background", args)
	}
	w, err := p.fleet.Start(context.Background(), args[1:]...)
	if err != nil {
		p.t.Fatal(err)
	}
	return &proc{w: w, logs: logView{w}}
}

// stop sends SIGTERM and waits for a clean exit.
func (pr *proc) stop(t *testing.T, within time.Duration) {
	t.Helper()
	if _, err := pr.w.Term(within); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// Every event carries its time in UTC to the millisecond: upstream calls
// and breaker transitions of one second can be ordered.
func TestLogTimeHasMilliseconds(t *testing.T) {
	var buf bytes.Buffer
	before := time.Now()
	log := newLogger(&buf, config.Log{Level: "info"})
	log.Info().Msg("one event")
	if n := bytes.Count(buf.Bytes(), []byte(`"time":`)); n != 1 {
		t.Fatalf("%d time fields in %s", n, buf.Bytes())
	}
	var ev struct{ Time, Message string }
	if err := json.Unmarshal(buf.Bytes(), &ev); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	at, err := time.Parse(time.RFC3339Nano, ev.Time)
	if err != nil || !regexp.MustCompile(`\.\d{3}Z$`).MatchString(ev.Time) {
		t.Fatalf("time %q: want RFC 3339 in UTC with milliseconds (%v)", ev.Time, err)
	}
	if at.Before(before.Truncate(time.Millisecond)) || at.After(time.Now()) || ev.Message != "one event" {
		t.Fatalf("event %s: its time is not when it was logged", buf.Bytes())
	}
}
