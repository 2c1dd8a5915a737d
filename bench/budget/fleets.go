package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/time/rate"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/upstream"
)

// llmqFleet is `llmq worker` subprocesses sharing one budget.
type llmqFleet struct {
	o     options
	dir   string
	cfg   string
	env   []string
	mu    sync.Mutex
	procs []*exec.Cmd
	logs  []*lockedBuffer
	dump  bool
}

// newLLMQFleet writes the workers' YAML file (LLMQ_CONFIG) with the
// scenario's budget: RPM/TPM, the provider's bursts only when sc.llmqBursts,
// and r's estimate method when set.
func newLLMQFleet(o options, sc *scenario, r row, e *env, url string) (fleet, error) {
	dir, err := os.MkdirTemp("", "llmq-bench-budget")
	if err != nil {
		return nil, fmt.Errorf("temp dir for the worker config: %w", err)
	}
	var bursts, method string
	if sc.llmqBursts {
		bursts = fmt.Sprintf(", burst: %d, burst_requests: %d", sc.burstTok, sc.burstReq)
	}
	if r.method != "" && !o.oldBinary {
		method = "\n  method: " + string(r.method)
	}
	cfg := filepath.Join(dir, "llmq.yaml")
	yml := fmt.Sprintf(`prefix: %s
queue: %s
worker:
  queues: {%s: 1}
  shutdown_timeout: 5s
  metrics_addr: "127.0.0.1:0"
budgets:
  default: {rpm: %d, tpm: %d%s}
budget_max_wait: %s
budget_transit: %s
estimate:
  default_max_tokens: %d%s
log:
  level: warn
`, e.prefix, e.queue, e.queue, sc.rpm, sc.tpm, bursts, o.maxWait, o.transit, fakeupstream.DefaultCompletion, method)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		return nil, fmt.Errorf("write the worker config: %w", err)
	}
	return &llmqFleet{o: o, dir: dir, cfg: cfg, dump: o.keepWorkerLog,
		env: []string{"LLMQ_CONFIG=" + cfg, "LLMQ_REDIS_URL=redis://" + o.redisAddr + "/0",
			"OPENAI_BASE_URL=" + url, "OPENAI_API_KEY=sk-bench-budget-0123456789", "LLMQ_API_KEY_FILE=",
			"LLMQ_RPM=", "LLMQ_TPM=", "LOG_LEVEL=warn", "LLMQ_METRICS_ADDR=127.0.0.1:0"}}, nil
}

// add starts procs more workers with concurrency handlers each.
func (f *llmqFleet) add(procs, concurrency int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range procs {
		cmd := exec.Command(f.o.bin, "worker", "--concurrency", strconv.Itoa(concurrency))
		cmd.Env = append(os.Environ(), f.env...)
		logs := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s worker (build it with `make build`): %w", f.o.bin, err)
		}
		f.procs = append(f.procs, cmd)
		f.logs = append(f.logs, logs)
	}
	return nil
}

// stop sends SIGTERM to every worker and waits for them to exit.
func (f *llmqFleet) stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
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

// baselineFleet is plain asynq servers in this process.
type baselineFleet struct {
	o     options
	sc    *scenario
	e     *env
	url   string
	div   int64
	mu    sync.Mutex
	added []*asynq.Server
}

// newBaselineFleet returns asynq servers whose handler waits on
// golang.org/x/time/rate limiters (a request one and a token one) and calls
// the upstream: the budget and the provider's buckets split evenly across
// procs of them, or (split false) the whole budget each. A failed call is
// retried by asynq after the server's Retry-After when it sent one, else
// after asynq's default backoff.
func newBaselineFleet(o options, sc *scenario, e *env, url string, procs int, split bool) fleet {
	div := int64(1)
	if split {
		div = int64(procs)
	}
	return &baselineFleet{o: o, sc: sc, e: e, url: url, div: div}
}

// add starts procs more servers with concurrency handlers each.
func (f *baselineFleet) add(procs, concurrency int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	capReq, capTok := f.sc.capacities()
	for range procs {
		client, err := upstream.New(upstream.Config{BaseURL: f.url, Key: upstream.StaticKey("sk-bench-budget-0123456789")})
		if err != nil {
			return err
		}
		h := &plainHandler{
			client: client,
			est:    jobs.NewEstimator(fakeupstream.DefaultCompletion, jobs.WithMethod(jobs.MethodTokenizer)),
			reqs:   limiter(f.sc.rpm, capReq, f.div),
			toks:   limiter(f.sc.tpm, capTok, f.div),
		}
		srv := asynq.NewServer(asynq.RedisClientOpt{Addr: f.o.redisAddr}, asynq.Config{
			Concurrency:    concurrency,
			Queues:         map[string]int{f.e.queue: 1},
			RetryDelayFunc: retryAfter,
			LogLevel:       asynq.ErrorLevel,
		})
		mux := asynq.NewServeMux()
		mux.Handle(jobs.TaskType, h)
		if err := srv.Start(mux); err != nil {
			return fmt.Errorf("start baseline asynq server: %w", err)
		}
		f.added = append(f.added, srv)
	}
	return nil
}

func (f *baselineFleet) stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.added {
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
	if err := h.toks.WaitN(ctx, min(h.est.Estimate(req).Total(), h.toks.Burst())); err != nil {
		return err
	}
	_, err = h.client.Chat(ctx, []byte(job.Body))
	return err
}
