package main

import (
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/producer"
)

// benchKey is the API key the fake upstream accepts.
const benchKey = "sk-bench-overhead-0123456789"

// Defaults of the flags: the measurement.
const (
	defaultJobs        = 4000
	defaultConcurrency = 32
	defaultRuns        = 3
	// pollEvery is how often the bench reads the queue's lists while a run
	// drains.
	pollEvery = 5 * time.Millisecond
	// drainLimit bounds one run.
	drainLimit = 5 * time.Minute
	// defaultProfileFor is -profile-for: longer than a default run drains.
	defaultProfileFor = 10 * time.Second
)

type options struct {
	bin         string
	compare     string // a second llmq binary measured in the same runs
	jobs        int
	concurrency int
	runs        int
	keepLogs    bool
	profileDir  string
	profileFor  time.Duration

	// -baseline-worker mode (the bench starts itself as the baseline).
	baselineWorker bool
	redisAddr      string
	queue, prefix  string
	url            string
	pprofAddr      string
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/llmq", "the llmq binary to measure (make build)")
	flag.StringVar(&o.compare, "compare", "", "a second llmq binary (say, main's) measured in the same runs, interleaved, to see a change's effect on a noisy machine")
	flag.IntVar(&o.jobs, "jobs", defaultJobs, "jobs per run")
	flag.IntVar(&o.concurrency, "concurrency", defaultConcurrency, "handler concurrency of each worker process")
	flag.IntVar(&o.runs, "runs", defaultRuns, "runs per worker kind; the best is reported")
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "print each llmq worker's log after its run")
	flag.StringVar(&o.profileDir, "profile", "", "write the CPU and allocation profiles of each worker's last run to this directory (llmq: cpu.pprof, allocs.pprof, worker.pprof on; the plain handler: plain-cpu.pprof, plain-allocs.pprof)")
	flag.DurationVar(&o.profileFor, "profile-for", defaultProfileFor, "how long the profiles of -profile cover from the start of the drain (idle time adds no CPU samples)")
	flag.BoolVar(&o.baselineWorker, "baseline-worker", false, "internal: run the plain asynq baseline worker")
	flag.StringVar(&o.redisAddr, "redis", "", "internal: Redis address of the baseline worker")
	flag.StringVar(&o.queue, "queue", "", "internal: queue of the baseline worker")
	flag.StringVar(&o.prefix, "prefix", "", "internal: key prefix of the baseline worker")
	flag.StringVar(&o.url, "url", "", "internal: upstream base URL of the baseline worker")
	flag.StringVar(&o.pprofAddr, "pprof-addr", "", "internal: address the baseline worker serves /debug/pprof/ on")
	flag.Parse()
	var err error
	if o.baselineWorker {
		err = runBaselineWorker(o)
	} else {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-overhead:", err)
		os.Exit(1)
	}
}

// kind is one of the workers measured. start starts one process of it
// and returns once asynq lists it; with profile set it serves its
// profiles, which -profile writes to files named with prefix.
type kind struct {
	name   string
	prefix string
	start  func(ctx context.Context, o options, queue, url string, profile bool) (*proc, error)
}

// proc is one measured worker process.
type proc struct {
	pid   int
	log   string // the file its output goes to
	pprof string // base URL of its profiles (profile runs of llmq)
	// term sends SIGTERM and waits for the exit: an error when it was not
	// clean. kill stops it at once; both may be called, in any order.
	term func() error
	kill func()
}

// measurement is one run's figures.
type measurement struct {
	rate                  float64 // jobs/s from the first dequeue to the last job done
	workerCPU, redisCPU   time.Duration
	commands              map[string]int64 // Redis command calls during the run
	commandUsec           map[string]int64 // their Redis time (µs), the bench's polls left out
	jobs                  int
	upstreamCalls         int64
	workerLog             string
	drainStart, drainStop time.Time
}

func run(o options) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "llmq-bench-overhead")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rs, err := startRedis(ctx, filepath.Join(dir, "redis"))
	if err != nil {
		return err
	}
	defer rs.kill()
	o.redisAddr = rs.addr
	fake, err := fakeupstream.New(fakeupstream.Config{APIKey: benchKey})
	if err != nil {
		return err
	}
	hs := httptest.NewServer(fake.Handler())
	defer hs.Close()
	defer fake.Close()
	url := hs.URL + "/v1"
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kinds := []kind{
		{"plain asynq handler", "plain-", func(_ context.Context, o options, queue, url string, profile bool) (*proc, error) {
			return startBaseline(dir, self, o, queue, url, profile)
		}},
		{"llmq worker", "", func(ctx context.Context, o options, queue, url string, profile bool) (*proc, error) {
			return startLLMQ(ctx, dir, o.bin, o, queue, url, profile)
		}},
	}
	if o.compare != "" {
		kinds = append(kinds, kind{"llmq -compare binary", "compare-", func(ctx context.Context, o options, queue, url string, _ bool) (*proc, error) {
			return startLLMQ(ctx, dir, o.compare, o, queue, url, false)
		}})
	}
	fmt.Printf("bench-overhead: %d jobs per run, 1 process × %d, instant fake upstream, own redis-server %s, best of %d\n",
		o.jobs, o.concurrency, rs.addr, o.runs)
	best := make([]*measurement, len(kinds))
	cpu := make([][]float64, len(kinds)) // per run: worker + Redis CPU per job (ms)
	for r := range o.runs {
		// Interleaved, so load on the machine hits every kind alike, each
		// run starting with the next kind, so none always goes first.
		for i := range kinds {
			k := (r + i) % len(kinds)
			kd := kinds[k]
			queue := fmt.Sprintf("ovh%d%c", r, 'a'+k)
			profile := o.profileDir != "" && k < 2 && r == o.runs-1
			m, err := measure(ctx, o, rs, fake, kd, queue, url, profile)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", kd.name, r+1, err)
			}
			w, rd := perJobMS(m.workerCPU, m.jobs), perJobMS(m.redisCPU, m.jobs)
			cpu[k] = append(cpu[k], w+rd)
			fmt.Printf("  run %d %-20s %7.0f jobs/s   CPU/job: worker %.3f ms, Redis %.3f ms\n", r+1, kd.name, m.rate, w, rd)
			if o.keepLogs {
				fmt.Println(m.workerLog)
			}
			if best[k] == nil || m.rate > best[k].rate {
				best[k] = m
			}
		}
	}
	fmt.Println()
	fmt.Printf("%-22s %9s %16s %15s %16s\n", "", "jobs/s", "worker CPU/job", "Redis CPU/job", "Redis cmds/job")
	for k, kd := range kinds {
		m := best[k]
		fmt.Printf("%-22s %9.0f %13.3f ms %12.3f ms %16.1f\n", kd.name, m.rate,
			perJobMS(m.workerCPU, m.jobs), perJobMS(m.redisCPU, m.jobs), float64(total(m.commands))/float64(m.jobs))
	}
	fmt.Printf("ratio llmq/plain: %.2f× (target ≥ 0.80×)\n", best[1].rate/best[0].rate)
	if o.compare != "" {
		fmt.Printf("ratio -compare/plain: %.2f×; median CPU per job (worker + Redis), -bin %.3f ms, -compare %.3f ms\n",
			best[2].rate/best[0].rate, median(cpu[1]), median(cpu[2]))
	}
	// On a shared machine the rates swing with other work; CPU per job
	// barely does, so the ratio of the median CPU per job says the same
	// with less noise.
	fmt.Printf("ratio of median CPU per job (worker + Redis), plain/llmq: %.3f ms / %.3f ms = %.2f×\n\n",
		median(cpu[0]), median(cpu[1]), median(cpu[0])/median(cpu[1]))
	for k, kd := range kinds {
		fmt.Printf("Redis commands per job, %s: %s\n", kd.name, topCommands(best[k].commands, best[k].jobs))
		fmt.Printf("Redis µs per job (commandstats; script commands also inside evalsha), %s: %s\n", kd.name, topCommands(best[k].commandUsec, best[k].jobs))
	}
	return nil
}

// median returns the median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func perJobMS(d time.Duration, jobs int) float64 {
	return float64(d) / float64(time.Millisecond) / float64(jobs)
}

// measure runs one batch through one worker process.
func measure(ctx context.Context, o options, rs *redisServer, fake *fakeupstream.Server, kd kind, queue, url string, profile bool) (*measurement, error) {
	rdb := redis.NewClient(&redis.Options{Addr: rs.addr})
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	// Pause the queue until the worker is up, so the run measures draining,
	// not the process start.
	if err := insp.PauseQueue(queue); err != nil {
		return nil, fmt.Errorf("pause queue: %w", err)
	}
	p, err := producer.New(asynq.RedisClientOpt{Addr: rs.addr}, producer.WithQueue(queue), producer.WithPrefix(queue))
	if err != nil {
		return nil, err
	}
	defer p.Close()
	rep, err := p.EnqueueBatch(ctx, strings.NewReader(batchJSONL(o.jobs)), producer.BatchID("overhead"))
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	if rep.Enqueued != o.jobs {
		return nil, fmt.Errorf("enqueued %d of %d jobs", rep.Enqueued, o.jobs)
	}
	w, err := kd.start(ctx, o, queue, url, profile)
	if err != nil {
		return nil, err
	}
	defer w.kill()
	calls0 := fake.Stats().Requests
	wcpu0, err := procCPU(w.pid)
	if err != nil {
		return nil, err
	}
	rcpu0, err := procCPU(rs.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	cs0, us0, err := commandStats(ctx, rdb)
	if err != nil {
		return nil, err
	}
	var profiles <-chan error
	if w.pprof != "" {
		profiles = takeProfiles(w.pprof, o.profileFor, o.profileDir, kd.prefix)
	}
	if err := insp.UnpauseQueue(queue); err != nil {
		return nil, fmt.Errorf("unpause queue: %w", err)
	}
	m := &measurement{jobs: o.jobs}
	polls, err := drain(ctx, rdb, queue, o.jobs, m)
	if err != nil {
		return nil, fmt.Errorf("%w\nworker log tail:\n%s", err, tail(w.log, 10))
	}
	wcpu1, err := procCPU(w.pid)
	if err != nil {
		return nil, err
	}
	rcpu1, err := procCPU(rs.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	cs1, us1, err := commandStats(ctx, rdb)
	if err != nil {
		return nil, err
	}
	if profiles != nil {
		if err := <-profiles; err != nil {
			return nil, err
		}
		fmt.Printf("  profiles of the %s's run %s: %s (go tool pprof -top %s)\n", kd.name, queue, o.profileDir, filepath.Join(o.profileDir, kd.prefix+"cpu.pprof"))
	}
	m.upstreamCalls = fake.Stats().Requests - calls0
	m.workerCPU, m.redisCPU = wcpu1-wcpu0, rcpu1-rcpu0
	m.commands, m.commandUsec = map[string]int64{}, map[string]int64{}
	for c, n := range cs1 {
		if d := n - cs0[c]; d > 0 {
			m.commands[c] = d
		}
		if d := us1[c] - us0[c]; d > 0 && c != "info" && c != "llen" && c != "zcard" {
			m.commandUsec[c] = d
		}
	}
	// The bench's own reads: one pipeline of 4 per poll, and the INFO.
	m.commands["llen"] -= 2 * polls
	m.commands["zcard"] -= 2 * polls
	m.commands["info"]--
	for c, n := range m.commands {
		if n <= 0 {
			delete(m.commands, c)
		}
	}
	if err := w.term(); err != nil {
		return nil, fmt.Errorf("%w:\n%s", err, tail(w.log, 10))
	}
	if m.upstreamCalls != int64(o.jobs) {
		return nil, fmt.Errorf("the upstream answered %d calls for %d jobs", m.upstreamCalls, o.jobs)
	}
	if o.keepLogs {
		m.workerLog = tail(w.log, 40)
	}
	return m, nil
}

// drain polls the queue's lists until every task is done; the rate is
// measured from the first task taken to the last done. It returns the
// number of polls made (their commands are the bench's, not the worker's).
func drain(ctx context.Context, rdb *redis.Client, queue string, jobs int, m *measurement) (int64, error) {
	base := "asynq:{" + queue + "}:"
	deadline := time.Now().Add(drainLimit)
	var polls int64
	for {
		pipe := rdb.Pipeline()
		pending, active := pipe.LLen(ctx, base+"pending"), pipe.LLen(ctx, base+"active")
		retry, sched := pipe.ZCard(ctx, base+"retry"), pipe.ZCard(ctx, base+"scheduled")
		_, err := pipe.Exec(ctx)
		polls++
		if err != nil {
			return polls, fmt.Errorf("read the queue: %w", err)
		}
		now := time.Now()
		left := pending.Val() + active.Val() + retry.Val() + sched.Val()
		if m.drainStart.IsZero() && pending.Val() < int64(jobs) {
			m.drainStart = now
		}
		if left == 0 {
			m.drainStop = now
			m.rate = float64(jobs) / m.drainStop.Sub(m.drainStart).Seconds()
			return polls, nil
		}
		if now.After(deadline) {
			return polls, fmt.Errorf("%d tasks left after %s", left, drainLimit)
		}
		time.Sleep(pollEvery)
	}
}

// batchJSONL returns n short jobs.
func batchJSONL(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"custom_id":"c%d","model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %d"}],"max_tokens":32}`+"\n", i, i)
	}
	return b.String()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
