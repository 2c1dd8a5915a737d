package drill

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// workerProc is one `llmq worker` process.
type workerProc struct {
	n       int // 1-based number in the drill
	pid     int
	cmd     *exec.Cmd
	logPath string
	metrics string // host:port of its metrics listener
	logFile *os.File
	done    chan struct{}
	exitErr error
}

// startFleet starts k workers (see startWorker).
func (e *env) startFleet(ctx context.Context, k int) ([]*workerProc, error) {
	fleet := make([]*workerProc, 0, k)
	for range k {
		w, err := e.startWorker(ctx)
		if err != nil {
			return fleet, err
		}
		fleet = append(fleet, w)
	}
	return fleet, nil
}

// startWorker starts `llmq worker` and returns once asynq lists its server
// (it has registered with Redis and dequeues).
func (e *env) startWorker(ctx context.Context) (*workerProc, error) {
	e.mu.Lock()
	e.nextID++
	n := e.nextID
	e.mu.Unlock()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	w := &workerProc{n: n, logPath: filepath.Join(e.dir, fmt.Sprintf("worker-%d.log", n)),
		metrics: "127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	if w.logFile, err = os.Create(w.logPath); err != nil {
		return nil, fmt.Errorf("drill: worker log: %w", err)
	}
	w.cmd = exec.Command(e.o.Bin, "worker")
	w.cmd.Env = e.vars("LLMQ_METRICS_ADDR=" + w.metrics)
	w.cmd.Stderr = w.logFile
	w.cmd.Stdout = w.logFile
	if err := w.cmd.Start(); err != nil {
		w.logFile.Close()
		return nil, fmt.Errorf("drill: start worker: %w", err)
	}
	w.pid = w.cmd.Process.Pid
	go func() {
		w.exitErr = w.cmd.Wait()
		w.logFile.Close()
		close(w.done)
	}()
	e.mu.Lock()
	e.workers = append(e.workers, w)
	e.mu.Unlock()
	err = waitUntil(ctx, 20*time.Second, func() (bool, error) {
		select {
		case <-w.done:
			return false, fmt.Errorf("worker %d exited at start (%v): %s", n, w.exitErr, tail(w.logPath, 5))
		default:
		}
		srvs, err := e.insp.Servers()
		if err != nil {
			return false, nil
		}
		for _, s := range srvs {
			if s.PID == w.pid {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("drill: worker %d (pid %d) did not register with asynq: %w", n, w.pid, err)
	}
	e.logf("worker %d started (pid %d)", n, w.pid)
	return w, nil
}

// procs returns every worker process the drill started.
func (e *env) procs() []*workerProc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*workerProc(nil), e.workers...)
}

// alive reports whether the process is still running.
func (w *workerProc) alive() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// kill9 sends SIGKILL and waits until the process is gone.
func (w *workerProc) kill9() {
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.done
}

// kill is kill9 for a process that may have exited already.
func (w *workerProc) kill() {
	if w.alive() {
		w.kill9()
	}
}

// term sends SIGTERM and waits up to within for the exit; it returns how
// long the exit took and an error when the process did not exit cleanly
// in time (it is then killed).
func (w *workerProc) term(within time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
		took := time.Since(start)
		if w.exitErr != nil {
			return took, fmt.Errorf("worker %d exited with %v after SIGTERM: %s", w.n, w.exitErr, tail(w.logPath, 3))
		}
		return took, nil
	case <-time.After(within):
		w.kill9()
		return time.Since(start), fmt.Errorf("worker %d did not exit within %v of SIGTERM (killed)", w.n, within)
	}
}

// peakRSS returns the process's peak resident set (VmHWM) in KiB.
func (w *workerProc) peakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", w.pid))
	if err != nil {
		return 0, fmt.Errorf("read VmHWM of worker %d: %w", w.n, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("worker %d: no VmHWM in /proc status", w.n)
}

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
