package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/llmqtest/fleet"
)

// Process handling of the two kinds.
const (
	// registerWithin bounds a worker's start (until asynq lists it).
	registerWithin = 20 * time.Second
	// termWithin bounds a worker's graceful exit after SIGTERM.
	termWithin = 15 * time.Second
	// workerShutdown is the llmq worker's shutdown_timeout.
	workerShutdown = 5 * time.Second
)

// startLLMQ starts `llmq worker` through the shared fleet harness
// (llmqtest/fleet) with llmq's defaults — no budget, no fallback, metrics
// served as in production — and the run's queue, prefix and concurrency;
// with profile, it serves its profiles (worker.pprof).
func startLLMQ(ctx context.Context, dir, bin string, o options, queue, url string, profile bool) (*proc, error) {
	s := config.Default()
	s.RedisURL, s.Upstream.BaseURL = "redis://"+o.redisAddr+"/0", url
	s.Prefix, s.Queue = queue, queue
	s.Worker.Concurrency = o.concurrency
	s.Worker.Queues = map[string]int{queue: 1}
	s.Worker.ShutdownTimeout = workerShutdown
	s.Worker.MetricsAddr = "127.0.0.1:0"
	s.Worker.Pprof = profile
	s.Log = config.Log{Level: "info", Environment: "prod"}
	fdir := filepath.Join(dir, queue)
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		return nil, err
	}
	f, err := fleet.New(fleet.Config{Bin: bin, Dir: fdir, Settings: s, APIKey: benchKey, Metrics: profile, StartTimeout: registerWithin})
	if err != nil {
		return nil, err
	}
	w, err := f.Start(ctx)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (build it with `make build`)", err)
	}
	p := &proc{pid: w.PID, log: w.LogPath, kill: func() { _ = f.Close() }}
	if profile {
		p.pprof = "http://" + w.MetricsAddr + "/debug/pprof/"
	}
	p.term = func() error {
		_, err := w.Term(termWithin)
		return err
	}
	return p, nil
}

// startBaseline starts this command as the plain asynq baseline worker
// (-baseline-worker), its output in dir/<queue>.log; with profile, it
// serves its profiles as llmq's worker.pprof does.
func startBaseline(dir, self string, o options, queue, url string, profile bool) (*proc, error) {
	path := filepath.Join(dir, queue+".log")
	logf, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	args := []string{"-baseline-worker", "-redis", o.redisAddr, "-queue", queue, "-prefix", queue,
		"-url", url, "-concurrency", fmt.Sprint(o.concurrency)}
	var pprofBase string
	if profile {
		addr, err := freeAddr()
		if err != nil {
			logf.Close()
			return nil, err
		}
		args = append(args, "-pprof-addr", addr)
		pprofBase = "http://" + addr + "/debug/pprof/"
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start the baseline worker: %w", err)
	}
	var (
		once    sync.Once
		exitErr error
	)
	wait := func() error {
		once.Do(func() { exitErr = cmd.Wait(); logf.Close() })
		return exitErr
	}
	p := &proc{pid: cmd.Process.Pid, log: path, pprof: pprofBase,
		kill: func() { _ = cmd.Process.Kill(); _ = wait() },
		term: func() error {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- wait() }()
			select {
			case err := <-done:
				if err != nil {
					return fmt.Errorf("baseline worker exited with %v after SIGTERM", err)
				}
				return nil
			case <-time.After(termWithin):
				_ = cmd.Process.Kill()
				return fmt.Errorf("baseline worker did not exit within %v of SIGTERM", termWithin)
			}
		}}
	if err := waitRegistered(o.redisAddr, p.pid); err != nil {
		p.kill()
		return nil, fmt.Errorf("%w:\n%s", err, tail(path, 10))
	}
	return p, nil
}

// waitRegistered waits until asynq lists the server of process pid.
func waitRegistered(redisAddr string, pid int) error {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	for deadline := time.Now().Add(registerWithin); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		srvs, err := insp.Servers()
		if err == nil && slices.ContainsFunc(srvs, func(s *asynq.ServerInfo) bool { return s.PID == pid }) {
			return nil
		}
	}
	return errors.New("the worker did not register with asynq within " + registerWithin.String())
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
