package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's CPU
// times: 100 on every Linux architecture Go supports.
const clockTicks = 100

// redisServer is a redis-server process of the bench's own, so its CPU and
// command counts are the two workers' alone.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
}

// startRedis starts redis-server on a free port without persistence and
// returns when it answers PING.
func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server (install it: apt-get install redis-server): %w", err)
	}
	rs := &redisServer{addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd}
	c := redis.NewClient(&redis.Options{Addr: rs.addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := c.Ping(ctx).Err(); err == nil {
			return rs, nil
		} else if time.Now().After(deadline) {
			rs.kill()
			return nil, fmt.Errorf("redis-server on %s did not answer within 10s: %w", rs.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *redisServer) kill() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// procCPU returns the user plus system CPU time a process has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	// Fields after the command name (which may hold spaces), from field 3.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// commandStats returns INFO commandstats as calls and microseconds per
// command (a script's commands count in their own rows and inside
// evalsha's time).
func commandStats(ctx context.Context, rdb *redis.Client) (calls, usec map[string]int64, err error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, nil, fmt.Errorf("INFO commandstats: %w", err)
	}
	calls, usec = map[string]int64{}, map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		c, rest, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		u, _, _ := strings.Cut(strings.TrimPrefix(rest, "usec="), ",")
		n, err1 := strconv.ParseInt(c, 10, 64)
		us, err2 := strconv.ParseInt(u, 10, 64)
		if err1 != nil || err2 != nil {
			return nil, nil, fmt.Errorf("INFO commandstats: %q", line)
		}
		calls[name], usec[name] = n, us
	}
	return calls, usec, nil
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// topCommands lists commands by calls (or µs) per job, most first.
func topCommands(m map[string]int64, jobs int) string {
	names := make([]string, 0, len(m))
	for c := range m {
		names = append(names, c)
	}
	slices.SortFunc(names, func(a, b string) int {
		if m[a] != m[b] {
			return int(m[b] - m[a])
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, 0, len(names))
	for _, c := range names {
		if v := float64(m[c]) / float64(jobs); v >= 0.05 {
			parts = append(parts, fmt.Sprintf("%s %.1f", c, v))
		}
	}
	return strings.Join(parts, ", ")
}
