package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/time/rate"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/upstream"
)

// llmqFleet is procs `llmq worker` subprocesses sharing one budget.
type llmqFleet struct {
	dir   string
	procs []*exec.Cmd
	logs  []*lockedBuffer
	dump  bool
}

// startLLMQ starts procs `llmq worker` processes configured by one YAML file
// (LLMQ_CONFIG) with the row's budget.
func startLLMQ(o options, e *env, url string, procs int) (fleet, error) {
	dir, err := os.MkdirTemp("", "llmq-bench-budget")
	if err != nil {
		return nil, fmt.Errorf("temp dir for the worker config: %w", err)
	}
	cfg := filepath.Join(dir, "llmq.yaml")
	yml := fmt.Sprintf(`prefix: %s
queue: %s
worker:
  concurrency: %d
  queues: {%s: 1}
  shutdown_timeout: 5s
  metrics_addr: "127.0.0.1:0"
budgets:
  default: {rpm: %d, tpm: %d, burst: %d, burst_requests: %d}
budget_max_wait: %s
budget_transit: %s
estimate:
  default_max_tokens: %d
log:
  level: warn
`, e.prefix, e.queue, o.concurrency, e.queue, o.rpm, o.tpm, o.burstTok, o.burstReq, o.maxWait, o.transit, fakeupstream.DefaultCompletion)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		return nil, fmt.Errorf("write the worker config: %w", err)
	}
	f := &llmqFleet{dir: dir, dump: o.keepWorkerLog}
	for range procs {
		cmd := exec.Command(o.bin, "worker")
		cmd.Env = append(os.Environ(), "LLMQ_CONFIG="+cfg, "LLMQ_REDIS_URL=redis://"+o.redisAddr+"/0",
			"OPENAI_BASE_URL="+url, "OPENAI_API_KEY=sk-bench-budget-0123456789", "LLMQ_API_KEY_FILE=",
			"LLMQ_RPM=", "LLMQ_TPM=", "LOG_LEVEL=warn", "LLMQ_METRICS_ADDR=127.0.0.1:0")
		logs := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			_ = f.stop()
			return nil, fmt.Errorf("start %s worker (build it with `make build`): %w", o.bin, err)
		}
		f.procs = append(f.procs, cmd)
		f.logs = append(f.logs, logs)
	}
	return f, nil
}

// stop sends SIGTERM to every worker and waits for them to exit.
func (f *llmqFleet) stop() error {
	defer os.RemoveAll(f.dir)
	for _, p := range f.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	var errs []error
	for i, p := range f.procs {
		done := make(chan error, 1)
		go func() { done <- p.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				errs = append(errs, fmt.Errorf("worker %d exited with %w:\n%s", i, err, f.logs[i].String()))
			}
		case <-time.After(15 * time.Second):
			_ = p.Process.Kill()
			<-done
			errs = append(errs, fmt.Errorf("worker %d did not stop within 15s of SIGTERM", i))
		}
		if f.dump {
			fmt.Fprintf(os.Stderr, "--- worker %d log ---\n%s", i, f.logs[i].String())
		}
	}
	return errors.Join(errs...)
}

// baselineFleet is procs plain asynq servers in this process.
type baselineFleet struct{ servers []*asynq.Server }

// startBaseline starts procs asynq servers whose handler waits on
// golang.org/x/time/rate limiters (a request one and a token one) and calls
// the upstream: the budget split evenly across them, or (split false) the
// whole budget each. A failed call is retried by asynq after the server's
// Retry-After when it sent one, else after asynq's default backoff.
func startBaseline(o options, e *env, url string, procs int, split bool) (fleet, error) {
	div := int64(1)
	if split {
		div = int64(procs)
	}
	f := &baselineFleet{}
	for range procs {
		client, err := upstream.New(upstream.Config{BaseURL: url, Key: upstream.StaticKey("sk-bench-budget-0123456789")})
		if err != nil {
			return nil, err
		}
		h := &plainHandler{
			client: client,
			est:    jobs.NewEstimator(fakeupstream.DefaultCompletion),
			reqs:   limiter(o.rpm, o.burstReq, div),
			toks:   limiter(o.tpm, o.burstTok, div),
		}
		srv := asynq.NewServer(asynq.RedisClientOpt{Addr: o.redisAddr}, asynq.Config{
			Concurrency:    o.concurrency,
			Queues:         map[string]int{e.queue: 1},
			RetryDelayFunc: retryAfter,
			LogLevel:       asynq.ErrorLevel,
		})
		mux := asynq.NewServeMux()
		mux.Handle(jobs.TaskType, h)
		if err := srv.Start(mux); err != nil {
			_ = f.stop()
			return nil, fmt.Errorf("start baseline asynq server: %w", err)
		}
		f.servers = append(f.servers, srv)
	}
	return f, nil
}

func (f *baselineFleet) stop() error {
	for _, s := range f.servers {
		s.Shutdown()
	}
	return nil
}

// limiter is a per-process x/time/rate limiter holding 1/div of a
// per-minute limit and its burst (unlimited when perMinute is 0).
func limiter(perMinute, burst, div int64) *rate.Limiter {
	if perMinute == 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(float64(perMinute)/60/float64(div)), int(max(1, burst/div)))
}

// retryAfter is the baselines' asynq RetryDelayFunc: the server's
// Retry-After when it sent one, else asynq's default backoff.
func retryAfter(n int, err error, t *asynq.Task) time.Duration {
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.RetryAfter > 0 {
		return ue.RetryAfter
	}
	return asynq.DefaultRetryDelayFunc(n, err, t)
}

// plainHandler is the handler a user of plain asynq would write: wait for
// the process's own limiters, call the upstream, return its error.
type plainHandler struct {
	client     *upstream.Client
	est        *jobs.Estimator
	reqs, toks *rate.Limiter
}

// ProcessTask implements asynq.Handler.
func (h *plainHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	job, err := jobs.Decode(t.Payload())
	if err != nil {
		return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}
	req, err := job.Request()
	if err != nil {
		return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}
	if err := h.reqs.Wait(ctx); err != nil {
		return err
	}
	if err := h.toks.WaitN(ctx, h.est.Estimate(req).Total()); err != nil {
		return err
	}
	_, err = h.client.Chat(ctx, []byte(job.Body))
	return err
}
