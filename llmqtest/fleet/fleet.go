// Package fleet starts, stops and kills real `llmq worker` processes for
// drills, benchmarks and CLI tests: the one place that knows how a worker
// process is configured and launched.
//
// A Fleet owns a scratch directory holding the workers' configuration (a
// config.Config written as YAML, never a hand-formatted string) and one log
// file per worker. Every process gets a clean environment: nothing llmq
// reads (LLMQ_*, OPENAI_*, LOG_LEVEL) leaks in from the caller's.
//
//	f, err := fleet.New(fleet.Config{Bin: bin, Dir: dir, Settings: s, APIKey: "sk-test"})
//	w, err := f.Start(ctx)              // returns once asynq lists the worker
//	w.Term(10 * time.Second)            // SIGTERM, wait for a clean exit
//	f.Close()                           // SIGKILL whatever still runs
package fleet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.yaml.in/yaml/v3"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/redisconn"
)

// Defaults of the harness.
const (
	// DefaultStartTimeout is how long Start waits for a worker to register
	// with asynq.
	DefaultStartTimeout = 30 * time.Second
	// ConfigFile is the name of the workers' YAML file in Config.Dir.
	ConfigFile = "llmq.yaml"
	// pollInterval is how often waits look again.
	pollInterval = 25 * time.Millisecond
)

// ErrExited reports that a worker exited before it registered with asynq.
var ErrExited = errors.New("fleet: worker exited at start")

// Config says how to run a fleet's workers.
type Config struct {
	// Bin is the llmq binary (see Build). Required.
	Bin string
	// Dir holds the config file and the worker logs. Required; the caller
	// owns it (t.TempDir(), a drill's scratch directory).
	Dir string
	// Settings is the workers' configuration, written to Dir/llmq.yaml
	// (LLMQ_CONFIG). Start from Settings(...) or config.Default(). Its
	// RedisURL and Upstream.BaseURL are required.
	Settings config.Config
	// APIKey is the upstream key (OPENAI_API_KEY); it never reaches the
	// config file.
	APIKey string
	// Metrics gives each worker its own free port for /metrics
	// (Worker.MetricsAddr); when false, Settings.Worker.MetricsAddr stands
	// ("off" in Settings(...)).
	Metrics bool
	// Env is added to every process's environment (e.g. LLMQ_API_KEY_FILE=…).
	Env []string
	// StartTimeout bounds Start's wait for registration (default
	// DefaultStartTimeout).
	StartTimeout time.Duration
}

// Settings returns config.Default() with what every fleet of a test or
// drill needs: its Redis, upstream, prefix and queue (the workers consume
// only that queue), metrics off, and delays short enough for a test (asynq
// poll 100 ms, shutdown 5 s, hold recheck 500 ms, retry base 50 ms, cap
// 500 ms). Change fields of the result as needed.
func Settings(redisURL, upstreamURL, prefix, queue string) config.Config {
	s := config.Default()
	s.RedisURL, s.Upstream.BaseURL = redisURL, upstreamURL
	s.Prefix, s.Queue = prefix, queue
	s.Worker.Queues = map[string]int{queue: 1}
	s.Worker.PollInterval = 100 * time.Millisecond
	s.Worker.ShutdownTimeout = 5 * time.Second
	s.Worker.HoldRecheck = 500 * time.Millisecond
	s.Worker.MetricsAddr = "off"
	s.Retry.Base, s.Retry.Cap = 50*time.Millisecond, 500*time.Millisecond
	return s
}

// Fleet is a set of llmq processes sharing one configuration. It is safe
// for concurrent use.
type Fleet struct {
	cfg     Config
	cfgPath string
	insp    *asynq.Inspector

	mu      sync.Mutex
	workers []*Worker
	next    int
}

// New validates cfg and writes the config file; it starts nothing.
func New(cfg Config) (*Fleet, error) {
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, errors.New("fleet: Config.Bin and Config.Dir are required")
	}
	if _, err := os.Stat(cfg.Bin); err != nil {
		return nil, fmt.Errorf("fleet: llmq binary: %w", err)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if err := cfg.Settings.Validate(); err != nil {
		return nil, fmt.Errorf("fleet: Config.Settings: %w", err)
	}
	conn, err := redisconn.Parse(cfg.Settings.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("fleet: Settings.RedisURL: %w", err)
	}
	f := &Fleet{cfg: cfg, cfgPath: filepath.Join(cfg.Dir, ConfigFile)}
	if err := f.writeConfig(); err != nil {
		return nil, err
	}
	f.insp = asynq.NewInspector(conn.AsynqOpt())
	return f, nil
}

// writeConfig writes Settings as the workers' YAML file.
func (f *Fleet) writeConfig() error {
	b, err := yaml.Marshal(f.cfg.Settings)
	if err != nil {
		return fmt.Errorf("fleet: encode settings: %w", err)
	}
	if err := os.WriteFile(f.cfgPath, b, 0o600); err != nil {
		return fmt.Errorf("fleet: write config: %w", err)
	}
	return nil
}

// ConfigPath returns the path of the workers' YAML file (LLMQ_CONFIG).
func (f *Fleet) ConfigPath() string { return f.cfgPath }

// Settings returns the workers' configuration.
func (f *Fleet) Settings() config.Config { return f.cfg.Settings }

// Environ returns the environment of every llmq process of the fleet: the
// caller's, minus whatever llmq reads, plus LLMQ_CONFIG, OPENAI_API_KEY,
// Config.Env and extra.
func (f *Fleet) Environ(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LLMQ_") || strings.HasPrefix(k, "OPENAI_") || k == "LOG_LEVEL" {
			continue
		}
		out = append(out, kv)
	}
	out = append(out, "LLMQ_CONFIG="+f.cfgPath)
	if f.cfg.APIKey != "" {
		out = append(out, "OPENAI_API_KEY="+f.cfg.APIKey)
	}
	out = append(out, f.cfg.Env...)
	return append(out, extra...)
}

// Command returns `llmq args...` with the fleet's environment, not
// started: for the CLI's other commands (enqueue, status, dlq…).
func (f *Fleet) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, f.cfg.Bin, args...)
	cmd.Env = f.Environ()
	return cmd
}

// Run runs `llmq args...` to completion with stdin (nil: none) and returns
// its stdout, stderr and exit code; err is set only when it could not run.
func (f *Fleet) Run(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, code int, err error) {
	cmd := f.Command(ctx, args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	return out.String(), errb.String(), 0, err
}

// StartN starts n workers (see Start) and returns those started, with the
// first error.
func (f *Fleet) StartN(ctx context.Context, n int, args ...string) ([]*Worker, error) {
	ws := make([]*Worker, 0, n)
	for range n {
		w, err := f.Start(ctx, args...)
		if err != nil {
			return ws, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// Start starts `llmq worker args...` and returns once asynq lists its
// server (it has registered with Redis and dequeues). A worker that exits
// first is an error wrapping ErrExited with the end of its log.
func (f *Fleet) Start(ctx context.Context, args ...string) (*Worker, error) {
	f.mu.Lock()
	f.next++
	n := f.next
	f.mu.Unlock()
	w := &Worker{N: n, LogPath: filepath.Join(f.cfg.Dir, fmt.Sprintf("worker-%d.log", n)), done: make(chan struct{})}
	var extra []string
	if f.cfg.Metrics {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		w.MetricsAddr = "127.0.0.1:" + strconv.Itoa(port)
		extra = append(extra, "LLMQ_METRICS_ADDR="+w.MetricsAddr)
	}
	lf, err := os.Create(w.LogPath)
	if err != nil {
		return nil, fmt.Errorf("fleet: worker log: %w", err)
	}
	w.cmd = exec.Command(f.cfg.Bin, append([]string{"worker"}, args...)...)
	w.cmd.Env = f.Environ(extra...)
	w.cmd.Stdout, w.cmd.Stderr = lf, lf
	if err := w.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("fleet: start worker %d: %w", n, err)
	}
	w.PID = w.cmd.Process.Pid
	go func() {
		w.exitErr = w.cmd.Wait()
		lf.Close()
		close(w.done)
	}()
	f.mu.Lock()
	f.workers = append(f.workers, w)
	f.mu.Unlock()
	if err := f.awaitRegistered(ctx, w); err != nil {
		w.Kill()
		return nil, err
	}
	return w, nil
}

// awaitRegistered waits until asynq lists w's server.
func (f *Fleet) awaitRegistered(ctx context.Context, w *Worker) error {
	deadline := time.Now().Add(f.cfg.StartTimeout)
	for {
		select {
		case <-w.done:
			return fmt.Errorf("%w: worker %d (%v): %s", ErrExited, w.N, w.exitErr, w.Tail(5))
		default:
		}
		if srvs, err := f.insp.Servers(); err == nil {
			for _, s := range srvs {
				if s.PID == w.PID {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fleet: worker %d (pid %d) did not register with asynq within %v: %s", w.N, w.PID, f.cfg.StartTimeout, w.Tail(5))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// Workers returns every worker the fleet started, running or not.
func (f *Fleet) Workers() []*Worker {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*Worker(nil), f.workers...)
}

// Stop sends SIGTERM to every running worker and waits up to within for
// them all; it returns the errors of workers that did not exit cleanly in
// time (those are killed). Workers that had exited before are not its
// business.
func (f *Fleet) Stop(within time.Duration) error {
	var ws []*Worker
	for _, w := range f.Workers() {
		if w.Alive() {
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
			ws = append(ws, w)
		}
	}
	var errs []error
	for _, w := range ws {
		// Signalled once above: a second SIGTERM would make llmq stop
		// without draining (exit 143).
		if _, err := w.awaitExit(time.Now(), within); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close kills every worker still running and releases the fleet's Redis
// connection. The scratch directory stays (the caller owns it).
func (f *Fleet) Close() error {
	for _, w := range f.Workers() {
		w.Kill()
	}
	return f.insp.Close()
}

// Worker is one `llmq worker` process.
type Worker struct {
	// N numbers the fleet's workers from 1.
	N int
	// PID is the process id.
	PID int
	// LogPath is the file receiving its stdout and stderr.
	LogPath string
	// MetricsAddr is host:port of its metrics server (Config.Metrics).
	MetricsAddr string

	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
}

// Done is closed when the process has exited.
func (w *Worker) Done() <-chan struct{} { return w.done }

// Alive reports whether the process still runs.
func (w *Worker) Alive() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// ExitErr is the process's exit error (nil for exit 0); valid once Done is
// closed.
func (w *Worker) ExitErr() error { return w.exitErr }

// Kill sends SIGKILL and waits until the process is gone; a no-op when it
// has exited.
func (w *Worker) Kill() {
	if w.Alive() {
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-w.done
}

// Signal sends sig to the process.
func (w *Worker) Signal(sig os.Signal) error { return w.cmd.Process.Signal(sig) }

// Term sends SIGTERM and waits up to within for the exit. It returns how
// long the exit took, and an error when the process did not exit cleanly
// in time (it is then killed).
func (w *Worker) Term(within time.Duration) (time.Duration, error) {
	start := time.Now()
	if w.Alive() {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
	}
	return w.awaitExit(start, within)
}

// awaitExit waits up to within for the exit of a worker sent SIGTERM at
// start (see Term).
func (w *Worker) awaitExit(start time.Time, within time.Duration) (time.Duration, error) {
	select {
	case <-w.done:
		took := time.Since(start)
		if w.exitErr != nil {
			return took, fmt.Errorf("fleet: worker %d exited with %v after SIGTERM: %s", w.N, w.exitErr, w.Tail(3))
		}
		return took, nil
	case <-time.After(within):
		w.Kill()
		return time.Since(start), fmt.Errorf("fleet: worker %d did not exit within %v of SIGTERM (killed)", w.N, within)
	}
}

// Log returns the process's log so far.
func (w *Worker) Log() string {
	b, _ := os.ReadFile(w.LogPath)
	return string(b)
}

// Tail returns the last n lines of the log, joined by " | ", for error
// messages.
func (w *Worker) Tail(n int) string {
	lines := strings.Split(strings.TrimSpace(w.Log()), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// PeakRSS returns the process's peak resident set (VmHWM) in KiB (Linux).
func (w *Worker) PeakRSS() (int64, error) {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", w.PID))
	if err != nil {
		return 0, fmt.Errorf("fleet: VmHWM of worker %d: %w", w.N, err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("fleet: worker %d: no VmHWM in /proc status", w.N)
}

// Build compiles github.com/llmq/llmq/cmd/llmq into dir and returns the
// binary's path. Tests call it once from TestMain.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "llmq")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/llmq/llmq/cmd/llmq")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("fleet: go build llmq: %w: %s", err, strings.TrimSpace(errb.String()))
	}
	return bin, nil
}

// BinEnv names the environment variable that hands tests a prebuilt llmq
// binary (make builds bin/llmq first) instead of building one.
const BinEnv = "LLMQ_TEST_BIN"

// TestMain is the TestMain of a package whose tests run llmq processes: it
// builds the binary once into a temporary directory (or takes the one
// BinEnv names), stores its path in *bin, runs the tests, removes the build
// and exits with their code.
func TestMain(m *testing.M, bin *string) {
	if prebuilt := os.Getenv(BinEnv); prebuilt != "" {
		*bin = prebuilt
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "llmq-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *bin, err = Build(context.Background(), dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a TCP port free on 127.0.0.1 at the time of the call.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("fleet: free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
