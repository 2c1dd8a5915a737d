package drill

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server process the drill owns: its own port and
// data directory, so a drill can kill and restart it (and read INFO memory)
// without touching anyone else's Redis.
type redisServer struct {
	addr  string
	dir   string
	fsync string // "" (no AOF), "always" or "everysec"
	cmd   *exec.Cmd
	done  chan struct{}
}

// startRedis starts redis-server on a free port with dir as its data
// directory; fsync selects AOF persistence ("" none, "always", "everysec").
// It returns when the server answers PING.
func startRedis(ctx context.Context, dir, fsync string) (*redisServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis: data dir: %w", err)
	}
	var lastErr error
	for range 5 { // a free port can be taken between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		r := &redisServer{addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, fsync: fsync}
		if lastErr = r.start(ctx); lastErr == nil {
			return r, nil
		}
	}
	return nil, lastErr
}

// start runs redis-server on r.addr and waits until it serves.
func (r *redisServer) start(ctx context.Context) error {
	_, port, _ := net.SplitHostPort(r.addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--dir", r.dir, "--save", "",
		"--daemonize", "no", "--logfile", filepath.Join(r.dir, "redis.log")}
	if r.fsync != "" {
		args = append(args, "--appendonly", "yes", "--appendfsync", r.fsync)
	} else {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server (install it: apt-get install redis-server): %w", err)
	}
	r.cmd, r.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(r.done) }()
	c := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("redis-server on %s exited at start (see %s/redis.log): %w", r.addr, r.dir, err)
		case <-ctx.Done():
			r.kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.kill()
			return fmt.Errorf("redis-server on %s did not answer within 10s: %w", r.addr, err)
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *redisServer) kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// restart starts the server again on the same port and data directory (it
// reloads its AOF) and waits until it answers.
func (r *redisServer) restart(ctx context.Context) error {
	var err error
	for range 50 { // the port may linger briefly after SIGKILL
		if err = r.start(ctx); err == nil || ctx.Err() != nil {
			return err
		}
		if !strings.Contains(err.Error(), "exited at start") {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}

// close stops the server for good.
func (r *redisServer) close() { r.kill() }

// usedMemory returns INFO memory's used_memory in bytes.
func usedMemory(ctx context.Context, c redis.UniversalClient) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("INFO memory: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("INFO memory: no used_memory line")
}

// freePort returns a TCP port free on 127.0.0.1 at the time of the call.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
