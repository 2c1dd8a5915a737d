package redistopo_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/redisconn"
	"github.com/llmq/llmq/redistopo"
)

// TestClusterFailover starts a 3+3 cluster, writes through a client built
// from the cluster's URL, kills the key's master and reads the key back
// from the promoted replica.
func TestClusterFailover(t *testing.T) {
	ctx := context.Background()
	c, err := redistopo.StartCluster(ctx, t.TempDir(), redistopo.ClusterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Masters(ctx)) != 3 || len(c.Nodes) != 6 {
		t.Fatalf("masters %d of %d nodes", len(c.Masters(ctx)), len(c.Nodes))
	}
	conn, err := redisconn.Parse(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := conn.NewClient()
	defer rdb.Close()
	m, err := c.MasterOf(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	reps, err := c.ReplicasOf(ctx, m)
	if err != nil || len(reps) != 1 {
		t.Fatalf("replicas of %s: %v %v", m.Addr, reps, err)
	}
	setReplicated(ctx, t, m.Addr, "k", "v")
	killed := time.Now()
	m.Kill()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	now, err := c.MasterOf(ctx, "k")
	if err != nil || now != reps[0] {
		t.Fatalf("master after failover = %v, %v; want the replica %s", now, err, reps[0].Addr)
	}
	t.Logf("failover took %v", time.Since(killed).Round(time.Millisecond))
	// The client learns the new slot map after its first failed command.
	var v string
	for range 50 {
		if v, err = rdb.Get(ctx, "k").Result(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || v != "v" {
		t.Fatalf("GET after failover = %q, %v", v, err)
	}
	t.Logf("client served again %v after the kill", time.Since(killed).Round(time.Millisecond))
}

// TestSentinelFailover starts a master, a replica and three Sentinels,
// kills the master, and reads through the failover client from the
// promoted replica.
func TestSentinelFailover(t *testing.T) {
	ctx := context.Background()
	ss, err := redistopo.StartSentinel(ctx, t.TempDir(), redistopo.SentinelConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	conn, err := redisconn.Parse(ss.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := conn.NewClient()
	defer rdb.Close()
	m, err := ss.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	setReplicated(ctx, t, m.Addr, "k", "v")
	killed := time.Now()
	m.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		now, err := ss.Master(ctx)
		if err == nil && now != m {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no failover within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("failover took %v", time.Since(killed).Round(time.Millisecond))
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET after failover = %q, %v", v, err)
	}
}

// setReplicated sets key on the master at addr and waits until its replica
// acknowledges it. WAIT covers the writes of its own connection only, so
// both go over one connection to the master.
func setReplicated(ctx context.Context, t *testing.T, addr, key, value string) {
	t.Helper()
	direct := redis.NewClient(&redis.Options{Addr: addr})
	defer direct.Close()
	cn := direct.Conn()
	defer cn.Close()
	if err := cn.Set(ctx, key, value, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := cn.Do(ctx, "WAIT", 1, 2000).Int(); err != nil || n < 1 {
		t.Fatalf("WAIT 1 2000 = %d, %v: the replica did not acknowledge the write", n, err)
	}
}
