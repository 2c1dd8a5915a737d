package drill

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/llmq/llmq/llmqtest/fleet"
)

// startFleet starts k workers (see startWorker).
func (e *env) startFleet(ctx context.Context, k int) ([]*fleet.Worker, error) {
	ws := make([]*fleet.Worker, 0, k)
	for range k {
		w, err := e.startWorker(ctx)
		if err != nil {
			return ws, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// startWorker starts `llmq worker` and returns once asynq lists its server
// (it has registered with Redis and dequeues).
func (e *env) startWorker(ctx context.Context) (*fleet.Worker, error) {
	w, err := e.fleet.Start(ctx)
	if err != nil {
		return nil, fmt.Errorf("drill: %w", err)
	}
	e.logf("worker %d started (pid %d)", w.N, w.PID)
	return w, nil
}

// procs returns every worker process the drill started.
func (e *env) procs() []*fleet.Worker { return e.fleet.Workers() }

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// waitUntil polls cond every 50 ms until it reports true, returns an
// error, ctx ends or within passes.
func waitUntil(ctx context.Context, within time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(within)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
