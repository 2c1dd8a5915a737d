package redistopo

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterConfig shapes a cluster; zero values take the defaults.
type ClusterConfig struct {
	// Masters is the number of masters (default 3, at least 3).
	Masters int
	// Replicas is the number of replicas per master (default 1; 0 allowed
	// with NoReplicas).
	Replicas int
	// NoReplicas starts masters only (Replicas is ignored).
	NoReplicas bool
	// NodeTimeout is cluster-node-timeout (default DefaultNodeTimeout).
	NodeTimeout time.Duration
	// Extra are redis-server arguments added to every node, e.g.
	// "--appendonly", "yes".
	Extra []string
}

// Cluster is a running Redis Cluster.
type Cluster struct {
	// Nodes are every node, masters first as created.
	Nodes []*Server
}

// StartCluster starts a cluster in dir and returns once every slot is
// served, every node agrees the cluster is ok, and every replica is in
// sync with its master.
func StartCluster(ctx context.Context, dir string, cfg ClusterConfig) (*Cluster, error) {
	if cfg.Masters == 0 {
		cfg.Masters = 3
	}
	if cfg.Replicas == 0 && !cfg.NoReplicas {
		cfg.Replicas = 1
	}
	if cfg.NoReplicas {
		cfg.Replicas = 0
	}
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = DefaultNodeTimeout
	}
	c := &Cluster{}
	n := cfg.Masters * (1 + cfg.Replicas)
	for i := range n {
		args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(cfg.NodeTimeout.Milliseconds(), 10),
			"--cluster-replica-validity-factor", "0", "--save", "", "--appendonly", "no"}, cfg.Extra...)
		s, err := startServer(ctx, dir, true, "", args...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("redistopo: cluster node %d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, s)
	}
	create := []string{"--cluster", "create"}
	for _, s := range c.Nodes {
		create = append(create, s.Addr)
	}
	create = append(create, "--cluster-replicas", strconv.Itoa(cfg.Replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", create...).CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redistopo: redis-cli --cluster create: %w: %s", err, lastLines(string(out), 5))
	}
	if err := c.WaitHealthy(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// URL is the cluster's redis+cluster:// URL, every node a seed.
func (c *Cluster) URL() string {
	u := "redis+cluster://" + c.Nodes[0].Addr
	for i, s := range c.Nodes[1:] {
		if i == 0 {
			u += "?"
		} else {
			u += "&"
		}
		u += "addr=" + s.Addr
	}
	return u
}

// Close kills every node.
func (c *Cluster) Close() {
	for _, s := range c.Nodes {
		s.Kill()
	}
}

// WaitHealthy returns once every live node reports cluster_state:ok, sees
// every slot served by a live master, and every live replica's link to its
// master is up.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	return waitFor(ctx, readyTimeout, func(ctx context.Context) error {
		for _, s := range c.Nodes {
			if !s.Alive() {
				continue
			}
			if err := nodeHealthy(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
}

func nodeHealthy(ctx context.Context, s *Server) error {
	cl := s.Client()
	defer cl.Close()
	info, err := cl.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "cluster_state:ok") {
		return fmt.Errorf("%s: cluster_state not ok", s.Addr)
	}
	if !strings.Contains(info, "cluster_slots_ok:16384") {
		return fmt.Errorf("%s: not every slot is ok", s.Addr)
	}
	repl, err := cl.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
		return fmt.Errorf("%s: replica not in sync", s.Addr)
	}
	return nil
}

// MasterOf returns the live node that is master of key's slot now.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	for _, s := range c.Nodes {
		if !s.Alive() {
			continue
		}
		cl := s.Client()
		slot, err := cl.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			cl.Close()
			continue
		}
		slots, err := cl.ClusterSlots(ctx).Result()
		cl.Close()
		if err != nil {
			continue
		}
		for _, r := range slots {
			if int64(r.Start) <= slot && slot <= int64(r.End) && len(r.Nodes) > 0 {
				return c.node(r.Nodes[0].Addr)
			}
		}
	}
	return nil, errors.New("redistopo: no live node knows the slot's master")
}

// ReplicasOf returns the live replicas of master m.
func (c *Cluster) ReplicasOf(ctx context.Context, m *Server) ([]*Server, error) {
	cl := m.Client()
	defer cl.Close()
	id, err := cl.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return nil, err
	}
	lines, err := cl.Do(ctx, "CLUSTER", "REPLICAS", id).StringSlice()
	if err != nil {
		return nil, err
	}
	var out []*Server
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		if s, err := c.node(addr); err == nil && s.Alive() {
			out = append(out, s)
		}
	}
	return out, nil
}

// Masters returns the live nodes that are masters now.
func (c *Cluster) Masters(ctx context.Context) []*Server {
	var out []*Server
	for _, s := range c.Nodes {
		if !s.Alive() {
			continue
		}
		cl := s.Client()
		role, err := cl.Do(ctx, "ROLE").Slice()
		cl.Close()
		if err == nil && len(role) > 0 && role[0] == "master" {
			out = append(out, s)
		}
	}
	return out
}

func (c *Cluster) node(addr string) (*Server, error) {
	for _, s := range c.Nodes {
		if s.Addr == addr {
			return s, nil
		}
	}
	return nil, fmt.Errorf("redistopo: %s is not a node of this cluster", addr)
}

// Client is a cluster client of the cluster; the caller closes it.
func (c *Cluster) Client() *redis.ClusterClient {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
