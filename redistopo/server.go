package redistopo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of the topologies.
const (
	// DefaultNodeTimeout is a cluster node's cluster-node-timeout: how long
	// a master may be silent before its replica takes over.
	DefaultNodeTimeout = time.Second
	// DefaultDownAfter is Sentinel's down-after-milliseconds for the master.
	DefaultDownAfter = time.Second
	// DefaultFailoverTimeout is Sentinel's failover-timeout.
	DefaultFailoverTimeout = 5 * time.Second
	// DefaultMasterName is the Sentinel master's name.
	DefaultMasterName = "llmq"
	// startTimeout bounds waiting for one process to answer.
	startTimeout = 10 * time.Second
	// readyTimeout bounds waiting for a topology to settle.
	readyTimeout = 30 * time.Second
	// portTries is how often a start is retried on another free port.
	portTries = 5
	// poll is the interval of every readiness check.
	poll = 50 * time.Millisecond
)

// ErrNotReady is returned when a topology does not settle in time.
var ErrNotReady = errors.New("redistopo: topology not ready")

// ErrExited is returned when redis-server exits while it starts (its log
// says why; after a SIGKILL its port may still be taken for a moment).
var ErrExited = errors.New("redistopo: redis-server exited at start")

// Server is one redis-server process (a server, cluster node or Sentinel).
type Server struct {
	// Addr is its 127.0.0.1:PORT.
	Addr string
	// Dir holds its log and files.
	Dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// startServer starts redis-server with extra arguments on a free port (with
// a free port+10000 when cluster is true: the cluster bus), in its own
// directory under dir, and waits until it answers PING.
func startServer(ctx context.Context, dir string, cluster bool, conf string, extra ...string) (*Server, error) {
	var lastErr error
	for range portTries {
		port, err := freePort(cluster)
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: filepath.Join(dir, strconv.Itoa(port))}
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("redistopo: %w", err)
		}
		var args []string
		if conf != "" {
			path := filepath.Join(s.Dir, "redis.conf")
			if err := os.WriteFile(path, []byte(fmt.Sprintf("port %d\n", port)+conf), 0o644); err != nil {
				return nil, fmt.Errorf("redistopo: %w", err)
			}
			args = append(args, path)
		}
		args = append(args, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", s.Dir,
			"--daemonize", "no", "--logfile", filepath.Join(s.Dir, "redis.log"))
		s.args = append(args, extra...)
		if lastErr = s.start(ctx); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// start runs the process and waits until it answers.
func (s *Server) start(ctx context.Context) error {
	cmd := exec.Command("redis-server", s.args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistopo: start redis-server: %w", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	err := waitFor(ctx, startTimeout, func(ctx context.Context) error {
		select {
		case <-s.done:
			return stop(fmt.Errorf("%w: %s (see %s)", ErrExited, s.Addr, filepath.Join(s.Dir, "redis.log")))
		default:
		}
		return c.Ping(ctx).Err()
	})
	if err != nil {
		s.Kill()
	}
	return err
}

// Kill sends SIGKILL and waits until the process is gone.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// Restart starts the process again after Kill, on the same port, directory
// and arguments (so it reloads its AOF, if it keeps one), and waits until it
// answers. A start that exits at once because the port still lingers after
// the SIGKILL is retried every poll for up to startTimeout.
func (s *Server) Restart(ctx context.Context) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start(ctx)
		if err == nil || !errors.Is(err, ErrExited) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

// Alive reports whether the process runs.
func (s *Server) Alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return s.cmd != nil
	}
}

// Client returns a client of this one process; the caller closes it.
func (s *Server) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
}

// freePort returns a port free on 127.0.0.1 (and, for a cluster node, with
// its bus port, port+10000, free too).
func freePort(bus bool) (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("redistopo: find a free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if !bus {
			_ = ln.Close()
			return port, nil
		}
		if port+10000 > 65535 {
			_ = ln.Close()
			continue
		}
		ln2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		_ = ln.Close()
		if err == nil {
			_ = ln2.Close()
			return port, nil
		}
	}
	return 0, errors.New("redistopo: no free port pair for a cluster node")
}

// waitFor calls check every poll until it returns nil, returns a
// permanent error, or d passes.
func waitFor(ctx context.Context, d time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		err := check(cctx)
		ccancel()
		if err == nil {
			return nil
		}
		var p *permanent
		if errors.As(err, &p) {
			return p.err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNotReady, err)
		case <-time.After(poll):
		}
	}
}

// permanent stops waitFor at once.
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }

// stop wraps err so waitFor returns it at once.
func stop(err error) error { return &permanent{err} }

// StartServer starts one plain redis-server (no persistence) in dir, with
// extra redis-server arguments.
func StartServer(ctx context.Context, dir string, extra ...string) (*Server, error) {
	return startServer(ctx, dir, false, "", append([]string{"--save", "", "--appendonly", "no"}, extra...)...)
}
