package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// bin is the llmq binary the tests run, built once.
var bin string

func TestMain(m *testing.M) { fleet.TestMain(m, &bin) }

func newFleet(t *testing.T, fcfg fakeupstream.Config, mod func(*fleet.Config)) (*fleet.Fleet, *fakeupstream.Server, *llmqtest.Env) {
	t.Helper()
	env := llmqtest.Redis(t)
	fake, err := fakeupstream.New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake.Handler())
	t.Cleanup(func() { fake.Close(); srv.Close() })
	cfg := fleet.Config{Bin: bin, Dir: t.TempDir(), APIKey: "sk-fleet-test-key-0123456789",
		Settings: fleet.Settings(env.RedisURL(), srv.URL+"/v1", env.Prefix, env.Queue)}
	if mod != nil {
		mod(&cfg)
	}
	f, err := fleet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f, fake, env
}

// The config file the fleet writes loads back, through llmq's own loader,
// as exactly the Settings it was given; the key never reaches it.
func TestSettingsRoundTrip(t *testing.T) {
	f, _, _ := newFleet(t, fakeupstream.Config{}, func(c *fleet.Config) {
		c.Settings.Breaker.Open = 7 * time.Second
		c.Settings.Budgets = map[string]config.Budget{"default": {RPM: 600, TPM: 60000}}
		c.Settings.Fallbacks = map[string][]string{"gpt-4o": {"gpt-4o-mini"}}
	})
	b, err := os.ReadFile(f.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "sk-fleet-test-key") {
		t.Fatal("the API key is in the config file")
	}
	got, err := config.Load(func(k string) string {
		if k == "LLMQ_CONFIG" {
			return f.ConfigPath()
		}
		return ""
	})
	if err != nil {
		t.Fatalf("llmq cannot load the fleet's config: %v\n%s", err, b)
	}
	// Compared as YAML: an empty list and a nil one are the same setting.
	var gotB, wantB bytes.Buffer
	if err := got.Print(&gotB); err != nil {
		t.Fatal(err)
	}
	if err := f.Settings().Print(&wantB); err != nil {
		t.Fatal(err)
	}
	if gotB.String() != wantB.String() {
		t.Fatalf("loaded settings differ\n got %s\nwant %s", gotB.String(), wantB.String())
	}
}

// Workers start and register, run jobs the CLI enqueues, stop cleanly on
// SIGTERM and die on SIGKILL.
func TestStartRunStopKill(t *testing.T) {
	f, fake, _ := newFleet(t, fakeupstream.Config{}, func(c *fleet.Config) { c.Metrics = true })
	ctx := context.Background()
	ws, err := f.StartN(ctx, 2, "--concurrency", "2")
	if err != nil {
		t.Fatal(err)
	}
	if ws[0].MetricsAddr == "" || ws[0].MetricsAddr == ws[1].MetricsAddr {
		t.Fatalf("metrics addresses %q %q, want one free port each", ws[0].MetricsAddr, ws[1].MetricsAddr)
	}
	var in strings.Builder
	for i := range 20 {
		fmt.Fprintf(&in, `{"custom_id":"c%d","model":"gpt-4o-mini","messages":[{"role":"user","content":"p %d"}],"max_tokens":8}`+"\n", i, i)
	}
	out, errOut, code, err := f.Run(ctx, strings.NewReader(in.String()), "enqueue", "-", "--batch", "fleet", "--wait")
	if err != nil || code != 0 {
		t.Fatalf("enqueue --wait: code %d err %v stdout %q stderr %s", code, err, out, errOut)
	}
	if n := fake.Stats().Requests; n < 20 {
		t.Fatalf("the fake saw %d calls for 20 jobs", n)
	}
	ws[0].Kill()
	if ws[0].Alive() || ws[0].ExitErr() == nil {
		t.Fatalf("worker 1 after SIGKILL: alive %v, exit %v", ws[0].Alive(), ws[0].ExitErr())
	}
	if _, err := ws[1].Term(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ws[1].Log(), `"event":"upstream_call"`) && !strings.Contains(ws[0].Log(), `"event":"upstream_call"`) {
		t.Error("no worker logged an upstream call")
	}
	if err := f.Stop(time.Second); err != nil {
		t.Fatalf("Stop with every worker gone: %v", err)
	}
}

// Stop signals each running worker once and every one exits cleanly (a
// second SIGTERM would make llmq stop without draining, exit 143).
func TestStopRunningWorkers(t *testing.T) {
	f, _, _ := newFleet(t, fakeupstream.Config{}, nil)
	ws, err := f.StartN(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Stop(15 * time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, w := range ws {
		if w.Alive() || w.ExitErr() != nil {
			t.Fatalf("worker %d after Stop: alive %v, exit %v", w.N, w.Alive(), w.ExitErr())
		}
	}
}

// A worker that exits at start is reported with its log, not waited for.
func TestStartReportsEarlyExit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, _, _ := newFleet(t, fakeupstream.Config{}, func(c *fleet.Config) { c.Settings.Worker.MetricsAddr = ln.Addr().String() })
	_, err = f.Start(context.Background())
	if !errors.Is(err, fleet.ErrExited) || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Start with the metrics port taken: %v, want ErrExited naming the address", err)
	}
}
