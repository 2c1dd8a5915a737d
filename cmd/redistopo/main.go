// Command redistopo starts a real Redis topology from the redis-server
// binaries on free ports, runs a command with LLMQ_TEST_REDIS_URL (and
// LLMQ_REDIS_URL) pointing at it, and stops the topology when the command
// ends. It is how `make test-redis-ha` runs llmq's Redis tests against a
// cluster and a Sentinel-managed master:
//
//	go run ./cmd/redistopo cluster -- go test ./ratelimit ./breaker
//	go run ./cmd/redistopo sentinel -- go test ./worker
//
// The command's exit status is redistopo's.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/llmq/llmq/redistopo"
)

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "redistopo:", err)
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	if len(args) < 3 || args[1] != "--" {
		return 2, errors.New("usage: redistopo cluster|sentinel -- COMMAND [ARGS…]")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "redistopo-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	var url string
	switch args[0] {
	case "cluster":
		c, err := redistopo.StartCluster(ctx, dir, redistopo.ClusterConfig{})
		if err != nil {
			return 1, err
		}
		defer c.Close()
		url = c.URL()
	case "sentinel":
		s, err := redistopo.StartSentinel(ctx, dir, redistopo.SentinelConfig{})
		if err != nil {
			return 1, err
		}
		defer s.Close()
		url = s.URL()
	default:
		return 2, fmt.Errorf("unknown topology %q (want cluster or sentinel)", args[0])
	}
	fmt.Fprintf(os.Stderr, "redistopo: %s at %s\n", args[0], url)
	cmd := exec.CommandContext(ctx, args[2], args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "LLMQ_TEST_REDIS_URL="+url, "LLMQ_REDIS_URL="+url)
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), nil
		}
		return 1, err
	}
	return 0, nil
}
