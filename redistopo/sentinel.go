package redistopo

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"
)

// SentinelConfig shapes a Sentinel set; zero values take the defaults.
type SentinelConfig struct {
	// MasterName is the monitored master's name (default DefaultMasterName).
	MasterName string
	// Sentinels is the number of Sentinels (default 3; quorum is a majority).
	Sentinels int
	// DownAfter is down-after-milliseconds (default DefaultDownAfter).
	DownAfter time.Duration
	// Extra are redis-server arguments added to the master and replica.
	Extra []string
}

// SentinelSet is a running master, its replica and the Sentinels watching
// them.
type SentinelSet struct {
	// MasterName is the name clients ask the Sentinels for.
	MasterName string
	// Data are the master as started and its replica.
	Data []*Server
	// Sentinels are the Sentinel processes.
	Sentinels []*Server
}

// StartSentinel starts a master, one replica and the Sentinels in dir and
// returns once the replica is in sync and every Sentinel knows the replica
// and the other Sentinels (so a failover can be agreed).
func StartSentinel(ctx context.Context, dir string, cfg SentinelConfig) (*SentinelSet, error) {
	if cfg.MasterName == "" {
		cfg.MasterName = DefaultMasterName
	}
	if cfg.Sentinels == 0 {
		cfg.Sentinels = 3
	}
	if cfg.DownAfter == 0 {
		cfg.DownAfter = DefaultDownAfter
	}
	ss := &SentinelSet{MasterName: cfg.MasterName}
	data := append([]string{"--save", "", "--appendonly", "no"}, cfg.Extra...)
	m, err := startServer(ctx, dir, false, "", data...)
	if err != nil {
		return nil, fmt.Errorf("redistopo: master: %w", err)
	}
	ss.Data = append(ss.Data, m)
	host, port, _ := net.SplitHostPort(m.Addr)
	r, err := startServer(ctx, dir, false, "", append(data, "--replicaof", host, port)...)
	if err != nil {
		ss.Close()
		return nil, fmt.Errorf("redistopo: replica: %w", err)
	}
	ss.Data = append(ss.Data, r)
	conf := fmt.Sprintf("sentinel monitor %s %s %s %d\nsentinel down-after-milliseconds %s %d\nsentinel failover-timeout %s %d\n",
		cfg.MasterName, host, port, cfg.Sentinels/2+1,
		cfg.MasterName, cfg.DownAfter.Milliseconds(), cfg.MasterName, DefaultFailoverTimeout.Milliseconds())
	for i := range cfg.Sentinels {
		s, err := startServer(ctx, dir, false, conf, "--sentinel")
		if err != nil {
			ss.Close()
			return nil, fmt.Errorf("redistopo: sentinel %d: %w", i, err)
		}
		ss.Sentinels = append(ss.Sentinels, s)
	}
	if err := ss.WaitHealthy(ctx); err != nil {
		ss.Close()
		return nil, err
	}
	return ss, nil
}

// URL is the set's redis+sentinel:// URL.
func (ss *SentinelSet) URL() string {
	u := "redis+sentinel://" + ss.Sentinels[0].Addr + "?"
	for _, s := range ss.Sentinels[1:] {
		u += "addr=" + s.Addr + "&"
	}
	return u + "master_name=" + ss.MasterName
}

// Close kills every process.
func (ss *SentinelSet) Close() {
	for _, s := range append(append([]*Server{}, ss.Sentinels...), ss.Data...) {
		s.Kill()
	}
}

// Master returns the data server the Sentinels name as master now.
func (ss *SentinelSet) Master(ctx context.Context) (*Server, error) {
	for _, s := range ss.Sentinels {
		if !s.Alive() {
			continue
		}
		cl := s.Client()
		addr, err := cl.Do(ctx, "SENTINEL", "get-master-addr-by-name", ss.MasterName).StringSlice()
		cl.Close()
		if err != nil || len(addr) != 2 {
			continue
		}
		for _, d := range ss.Data {
			if d.Addr == net.JoinHostPort(addr[0], addr[1]) {
				return d, nil
			}
		}
	}
	return nil, fmt.Errorf("redistopo: no Sentinel names a master of %s", ss.MasterName)
}

// WaitHealthy returns once the Sentinels agree on a live master, it has a
// live replica in sync, and every Sentinel knows the other Sentinels.
func (ss *SentinelSet) WaitHealthy(ctx context.Context) error {
	return waitFor(ctx, readyTimeout, func(ctx context.Context) error {
		m, err := ss.Master(ctx)
		if err != nil {
			return err
		}
		if !m.Alive() {
			return fmt.Errorf("master %s is down", m.Addr)
		}
		for _, d := range ss.Data {
			if d == m || !d.Alive() {
				continue
			}
			cl := d.Client()
			repl, err := cl.Info(ctx, "replication").Result()
			cl.Close()
			if err != nil {
				return err
			}
			if !strings.Contains(repl, "master_link_status:up") || !strings.Contains(repl, "master_port:"+portOf(m.Addr)) {
				return fmt.Errorf("replica %s not in sync with %s", d.Addr, m.Addr)
			}
		}
		alive := 0
		for _, s := range ss.Sentinels {
			if s.Alive() {
				alive++
			}
		}
		for _, s := range ss.Sentinels {
			if !s.Alive() {
				continue
			}
			cl := s.Client()
			others, err1 := cl.Do(ctx, "SENTINEL", "sentinels", ss.MasterName).Slice()
			replicas, err2 := cl.Do(ctx, "SENTINEL", "replicas", ss.MasterName).Slice()
			cl.Close()
			if err1 != nil || err2 != nil {
				return fmt.Errorf("sentinel %s: %v %v", s.Addr, err1, err2)
			}
			if len(others) < alive-1 || len(replicas) == 0 {
				return fmt.Errorf("sentinel %s knows %d sentinels and %d replicas", s.Addr, len(others), len(replicas))
			}
		}
		return nil
	})
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
