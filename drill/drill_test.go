package drill_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/drill"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// binPath is the llmq binary the drills run, built once.
var binPath string

func TestMain(m *testing.M) { fleet.TestMain(m, &binPath) }

// options returns the drill options of a test: the short form unless
// LLMQ_DRILL=long.
func options(t *testing.T) drill.Options {
	t.Helper()
	if testing.Short() {
		t.Skip("drills start processes and Redis servers: not under -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("the drills start their own Redis: redis-server is not installed (%v)", err)
	}
	size := drill.Short
	if os.Getenv("LLMQ_DRILL") == "long" {
		size = drill.Long
	}
	dir := os.Getenv("LLMQ_DRILL_DIR") // kept for post-mortems when set
	if dir == "" {
		dir = t.TempDir()
	}
	return drill.Options{Bin: binPath, Dir: dir, Size: size, Progress: testWriter{t}}
}

// run runs one drill and fails the test unless it passed.
func run(t *testing.T, fn func(context.Context, drill.Options) (*drill.Report, error)) {
	o := options(t)
	limit := 2 * time.Minute
	if o.Size == drill.Long {
		limit = 20 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	rep, err := fn(ctx, o)
	var b strings.Builder
	_ = drill.WriteTable(&b, []*drill.Report{rep})
	t.Log("\n" + b.String())
	if err != nil {
		t.Fatalf("drill could not run: %v", err)
	}
	if !rep.Passed() {
		t.Fatalf("drill failed: %s", strings.Join(rep.Failures, "; "))
	}
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestKill9MidBatch(t *testing.T) { run(t, drill.Kill9) }

func TestRedisRestartAlways(t *testing.T)   { run(t, drill.RedisRestartAlways) }
func TestRedisRestartEverysec(t *testing.T) { run(t, drill.RedisRestartEverysec) }
func TestRollingRestart(t *testing.T)       { run(t, drill.RollingRestart) }
func TestPoison(t *testing.T)               { run(t, drill.Poison) }
func TestChaos(t *testing.T)                { run(t, drill.Chaos) }
func TestLoad(t *testing.T)                 { run(t, drill.Load) }
func TestSecrets(t *testing.T)              { run(t, drill.Secrets) }
func TestOutage(t *testing.T)               { run(t, drill.Outage) }

func TestClusterFailover(t *testing.T)  { run(t, drill.ClusterFailover) }
func TestSentinelFailover(t *testing.T) { run(t, drill.SentinelFailover) }
