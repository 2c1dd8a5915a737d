// Command redisha measures how many jobs/s llmq's job path sustains on one
// Redis and on a 3-master Redis Cluster, with N queues: asynq keeps each
// queue in one hash slot, so a cluster spreads load only across queues.
// Each row enqueues a batch spread over N queues, then drains it with
// in-process llmq workers (package worker) against an instant fake
// upstream, and reports jobs/s, the Redis CPU used per job (INFO cpu,
// summed over the masters), the busiest master's CPU share, and the
// ceiling that implies: jobs/s when the busiest master reaches 100 % of a
// core (Redis runs commands on one thread).
//
//	go run ./bench/redisha [-jobs 4000] [-workers 2] [-concurrency 32] [-queues 1,6]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/redisconn"
	"github.com/llmq/llmq/redistopo"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

func main() {
	jobs := flag.Int("jobs", 4000, "jobs per row")
	workers := flag.Int("workers", 2, "in-process workers")
	conc := flag.Int("concurrency", 32, "concurrency per worker")
	queues := flag.String("queues", "1,6", "queue counts to measure, comma-separated")
	flag.Parse()
	if err := run(context.Background(), *jobs, *workers, *conc, *queues); err != nil {
		fmt.Fprintln(os.Stderr, "bench-redis:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, jobs, workers, conc int, queueList string) error {
	fake, err := fakeupstream.New(fakeupstream.Config{})
	if err != nil {
		return err
	}
	defer fake.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: fake.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String() + "/v1"

	dir, err := os.MkdirTemp("", "bench-redisha-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	one, err := redistopo.StartServer(ctx, dir)
	if err != nil {
		return err
	}
	defer one.Kill()
	clu, err := redistopo.StartCluster(ctx, dir, redistopo.ClusterConfig{NoReplicas: true})
	if err != nil {
		return err
	}
	defer clu.Close()

	fmt.Printf("%d jobs per row, %d workers × concurrency %d, instant fake upstream\n", jobs, workers, conc)
	fmt.Printf("%-22s %7s %9s %10s %13s %16s %13s\n", "redis", "queues", "jobs/s", "enqueue/s", "redis ms/job", "busiest master", "ceiling/s")
	for _, f := range strings.Split(queueList, ",") {
		nq, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || nq < 1 {
			return fmt.Errorf("-queues: %q is not a count", f)
		}
		for _, t := range []struct {
			name  string
			url   string
			nodes []*redistopo.Server
		}{
			{"one redis", "redis://" + one.Addr + "/0", []*redistopo.Server{one}},
			{"cluster (3 masters)", clu.URL(), clu.Masters(ctx)},
		} {
			r, err := row(ctx, t.url, t.nodes, base, jobs, nq, workers, conc)
			if err != nil {
				return fmt.Errorf("%s, %d queues: %w", t.name, nq, err)
			}
			fmt.Printf("%-22s %7d %9.0f %10.0f %13.3f %15.0f%% %13.0f\n", t.name, nq, r.drain, r.enqueue,
				r.cpu/r.drain*1000, r.busiest*100, r.drain/r.busiest)
		}
	}
	return nil
}

// result is one row: jobs/s draining and enqueuing, Redis CPU seconds per
// second of drain (all masters) and the busiest master's share of a core.
type result struct{ drain, enqueue, cpu, busiest float64 }

func row(ctx context.Context, url string, nodes []*redistopo.Server, base string, jobs, nq, workers, conc int) (result, error) {
	conn, err := redisconn.Parse(url)
	if err != nil {
		return result{}, err
	}
	id := llmqtest.Suffix()
	prefix := "bench-" + id
	queues := map[string]int{}
	var prods []*producer.Producer
	for i := range nq {
		q := fmt.Sprintf("bench-%s-%d", id, i)
		queues[q] = 1
		p, err := producer.New(conn.AsynqOpt(), producer.WithQueue(q), producer.WithPrefix(prefix))
		if err != nil {
			return result{}, err
		}
		defer p.Close()
		prods = append(prods, p)
	}
	start := time.Now()
	for i, p := range prods {
		n := jobs / nq
		if _, err := p.EnqueueBatch(ctx, strings.NewReader(batch(n, i)), producer.BatchID(fmt.Sprintf("b%d", i))); err != nil {
			return result{}, err
		}
	}
	enq := time.Since(start)
	total := jobs / nq * nq

	cpu0, err := redisCPU(ctx, nodes)
	if err != nil {
		return result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, workers)
	start = time.Now()
	for range workers {
		rdb := conn.NewClient()
		defer rdb.Close()
		client, err := upstream.New(upstream.Config{BaseURL: base, Key: upstream.StaticKey("sk-bench")})
		if err != nil {
			return result{}, err
		}
		w, err := worker.New(worker.Config{Redis: rdb, Upstream: client, Prefix: prefix, Concurrency: conc,
			Queues: queues, PollInterval: 50 * time.Millisecond, ShutdownTimeout: 5 * time.Second, Log: zerolog.Nop()})
		if err != nil {
			return result{}, err
		}
		go func() { done <- w.Run(wctx) }()
	}
	for {
		finished := 0
		for i, p := range prods {
			st, err := p.Batch(ctx, fmt.Sprintf("b%d", i))
			if err == nil && st.Done() {
				finished++
			}
		}
		if finished == nq {
			break
		}
		if time.Since(start) > 5*time.Minute {
			return result{}, fmt.Errorf("batch not drained in 5 min")
		}
		time.Sleep(20 * time.Millisecond)
	}
	drain := time.Since(start)
	cpu1, err := redisCPU(ctx, nodes)
	if err != nil {
		return result{}, err
	}
	cancel()
	for range workers {
		<-done
	}
	r := result{drain: float64(total) / drain.Seconds(), enqueue: float64(total) / enq.Seconds()}
	for i := range cpu0 {
		d := (cpu1[i] - cpu0[i]) / drain.Seconds()
		r.cpu += d
		r.busiest = max(r.busiest, d)
	}
	return r, nil
}

// redisCPU is the CPU seconds (user + sys) each node has used.
func redisCPU(ctx context.Context, nodes []*redistopo.Server) ([]float64, error) {
	out := make([]float64, len(nodes))
	for i, s := range nodes {
		c := s.Client()
		info, err := c.Info(ctx, "cpu").Result()
		c.Close()
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(info, "\n") {
			for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
				if v, ok := strings.CutPrefix(strings.TrimSpace(l), k); ok {
					f, _ := strconv.ParseFloat(v, 64)
					out[i] += f
				}
			}
		}
	}
	return out, nil
}

func batch(n, q int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"custom_id":"q%d-%d","model":"gpt-4o-mini","messages":[{"role":"user","content":"p %d"}],"max_tokens":16}`+"\n", q, i, i)
	}
	return b.String()
}
