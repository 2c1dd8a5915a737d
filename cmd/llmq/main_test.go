package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest"
)

// binPath is the llmq binary built once for the process-level tests.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llmq-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "llmq")
	build := exec.Command("go", "build", "-o", binPath, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build llmq:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// procEnv is the environment of llmq processes in one test: its own queue,
// key prefix and fake upstream.
type procEnv struct {
	t    *testing.T
	env  *llmqtest.Env
	fake *fakeupstream.Server
	vars []string
}

func newProcEnv(t *testing.T, fcfg fakeupstream.Config, extraYAML string) *procEnv {
	t.Helper()
	env := llmqtest.Redis(t)
	fake, err := fakeupstream.New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake.Handler())
	t.Cleanup(func() { fake.Close(); srv.Close() })
	cfg := filepath.Join(t.TempDir(), "llmq.yaml")
	yml := fmt.Sprintf("prefix: %s\nqueue: %s\nworker:\n  queues: {%s: 1}\n  poll_interval: 50ms\n  shutdown_timeout: 5s\n  hold_recheck: 200ms\nretry:\n  base: 20ms\n  cap: 200ms\n%s",
		env.Prefix, env.Queue, env.Queue, extraYAML)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	return &procEnv{t: t, env: env, fake: fake, vars: append(os.Environ(),
		"LLMQ_CONFIG="+cfg, "LLMQ_REDIS_URL="+env.RedisURL(), "OPENAI_BASE_URL="+srv.URL+"/v1",
		"OPENAI_API_KEY=sk-proc-test-key-0123456789", "LLMQ_API_KEY_FILE=", "LLMQ_RPM=", "LLMQ_TPM=",
		// Workers of parallel tests must not contend for :9464.
		"LLMQ_METRICS_ADDR=127.0.0.1:0")}
}

// run runs llmq to completion and returns stdout, stderr and the exit code.
func (p *procEnv) run(stdin string, args ...string) (string, string, int) {
	p.t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = p.vars
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		p.t.Fatalf("run llmq %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// proc is a running llmq process.
type proc struct {
	cmd  *exec.Cmd
	logs *llmqtest.Buffer // stderr, readable while the process runs
	done chan error
}

// start runs `llmq args...` in the background; the test's end kills it.
func (p *procEnv) start(args ...string) *proc {
	p.t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = p.vars
	logs := &llmqtest.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	pr := &proc{cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { pr.done <- cmd.Wait() }()
	p.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-pr.done
	})
	return pr
}

// stop sends SIGTERM and waits for a clean exit.
func (pr *proc) stop(t *testing.T, within time.Duration) {
	t.Helper()
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-pr.done:
		if err != nil {
			t.Fatalf("worker exited with %v after SIGTERM", err)
		}
		pr.done <- nil
	case <-time.After(within):
		t.Fatalf("worker did not exit within %v of SIGTERM", within)
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
