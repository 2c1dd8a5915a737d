package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// params are the drill's settings (flags).
type params struct {
	bin         string
	redisAddr   string
	workers     int
	concurrency int
	rate        float64 // jobs enqueued per second
	warmup      time.Duration
	outage      time.Duration
	tail        time.Duration // enqueueing goes on this long after recovery
	latency     time.Duration // fake upstream latency per call
	failures    int
	window      time.Duration
	open        time.Duration
	logs        string // keep the worker logs here ("" = a temporary directory)
	only        string // run only this mode: "shared" or "per-process"
}

// figures are one run's results.
type figures struct {
	mode             string
	enqueued         int
	succeeded        int
	deadLettered     int
	lost             int
	callsDuring      int64 // upstream calls that arrived during the outage
	opens, failedPr  int   // closed->open and half_open->open transitions (worker logs)
	burnedTotal      int
	burnedMax        int
	jobsBurned       int
	preRate          float64
	firstSuccess     time.Duration
	fullThroughput   time.Duration
	drained          time.Duration
	outageOpenPeriod int // open periods that fit in the outage: the target's probes
}

func main() {
	var p params
	flag.StringVar(&p.bin, "bin", "bin/llmq", "llmq binary to run as workers (make build)")
	flag.StringVar(&p.redisAddr, "redis", "127.0.0.1:6379", "Redis address")
	flag.IntVar(&p.workers, "workers", 4, "worker processes")
	flag.IntVar(&p.concurrency, "concurrency", 8, "jobs each worker runs at once")
	flag.Float64Var(&p.rate, "rate", 20, "jobs enqueued per second (the steady load)")
	flag.DurationVar(&p.warmup, "warmup", 4*time.Second, "steady load before the outage")
	flag.DurationVar(&p.outage, "outage", 10*time.Second, "outage: every call answered 503")
	flag.DurationVar(&p.tail, "tail", 6*time.Second, "steady load after recovery")
	flag.DurationVar(&p.latency, "latency", 20*time.Millisecond, "fake upstream latency per call")
	flag.IntVar(&p.failures, "failures", 5, "breaker: failures that open it")
	flag.DurationVar(&p.window, "window", 6*time.Second, "breaker: rolling window")
	flag.DurationVar(&p.open, "open", 3*time.Second, "breaker: open interval")
	flag.StringVar(&p.logs, "logs", "", "keep the worker logs in this directory")
	flag.StringVar(&p.only, "only", "", `run one mode only: "shared" or "per-process" (default both)`)
	flag.Parse()
	if err := run(p); err != nil {
		fmt.Fprintln(os.Stderr, "bench-outage:", err)
		os.Exit(1)
	}
}

func run(p params) error {
	if _, err := os.Stat(p.bin); err != nil {
		return fmt.Errorf("llmq binary %s: %w (run make build, or pass -bin)", p.bin, err)
	}
	fake, err := fakeupstream.New(fakeupstream.Config{Latency: p.latency})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the fake upstream: %w", err)
	}
	hs := &http.Server{Handler: fake.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer func() { fake.Close(); hs.Close() }()
	base := "http://" + ln.Addr().String() + "/v1"

	fmt.Printf("outage drill: %d worker processes × concurrency %d, %.0f jobs/s, fake latency %s\n", p.workers, p.concurrency, p.rate, p.latency)
	fmt.Printf("breaker %d failures / %s rolling, open %s; steady %s, outage (all 503) %s, steady %s\n\n",
		p.failures, p.window, p.open, p.warmup, p.outage, p.tail)
	var all []figures
	for _, perProcess := range []bool{false, true} {
		if (p.only == "shared" && perProcess) || (p.only == "per-process" && !perProcess) {
			all = append(all, figures{mode: "skipped", firstSuccess: -1, fullThroughput: -1, drained: -1})
			continue
		}
		f, err := drill(p, fake, base, perProcess)
		if err != nil {
			return err
		}
		all = append(all, f)
	}
	report(p, all)
	return nil
}

// drill runs one fleet through one outage.
func drill(p params, fake *fakeupstream.Server, base string, perProcess bool) (figures, error) {
	mode := "shared breaker (fleet)"
	if perProcess {
		mode = "per-process breakers (baseline)"
	}
	f := figures{mode: mode}
	ctx := context.Background()
	id := llmqtest.Suffix()
	rdb := redis.NewClient(&redis.Options{Addr: p.redisAddr})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return f, fmt.Errorf("redis at %s: %w (make redis)", p.redisAddr, err)
	}
	env := &llmqtest.Env{Addr: p.redisAddr, Opt: asynq.RedisClientOpt{Addr: p.redisAddr}, Client: rdb,
		Prefix: "llmqbench:outage:" + id, Queue: "llmqbench-outage-" + id}
	defer env.Flush(context.Background())

	dir, err := os.MkdirTemp("", "llmq-outage")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "llmq.yaml")
	yml := fmt.Sprintf(`prefix: %s
queue: %s
worker:
  queues: {%s: 1}
  poll_interval: 100ms
  shutdown_timeout: 5s
retry:
  base: 100ms
  cap: 6s
breaker: {failures: %d, window: %s, open: %s, per_process: %v}
`, env.Prefix, env.Queue, env.Queue, p.failures, p.window, p.open, perProcess)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		return f, err
	}
	vars := append(os.Environ(), "LLMQ_CONFIG="+cfg, "LLMQ_REDIS_URL="+env.RedisURL(), "OPENAI_BASE_URL="+base,
		"OPENAI_API_KEY=sk-outage-drill", "LLMQ_API_KEY_FILE=", "LLMQ_RPM=", "LLMQ_TPM=", "LLMQ_METRICS_ADDR=off", "LOG_LEVEL=info")

	if err := fake.SetFaults(""); err != nil {
		return f, err
	}
	fake.Reset()
	var procs []*exec.Cmd
	var logs []string
	stop := func() {
		for _, c := range procs {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range procs {
			_ = c.Wait()
		}
		procs = nil
	}
	defer stop()
	for i := 0; i < p.workers; i++ {
		logDir := dir
		if p.logs != "" {
			logDir = p.logs
			if err := os.MkdirAll(logDir, 0o755); err != nil {
				return f, err
			}
		}
		logPath := filepath.Join(logDir, fmt.Sprintf("%s-worker%d.log", map[bool]string{false: "shared", true: "per-process"}[perProcess], i))
		lf, err := os.Create(logPath)
		if err != nil {
			return f, err
		}
		defer lf.Close()
		c := exec.Command(p.bin, "worker", "--concurrency", fmt.Sprint(p.concurrency))
		c.Env, c.Stderr = vars, lf
		if err := c.Start(); err != nil {
			return f, fmt.Errorf("start worker: %w", err)
		}
		procs, logs = append(procs, c), append(logs, logPath)
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	if err := waitFor(20*time.Second, "the workers to start", func() bool {
		srvs, err := insp.Servers()
		n := 0
		for _, s := range srvs {
			if _, ok := s.Queues[env.Queue]; ok {
				n++
			}
		}
		return err == nil && n >= p.workers
	}); err != nil {
		return f, err
	}

	prod, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix), producer.WithAttempts(5))
	if err != nil {
		return f, err
	}
	defer prod.Close()

	// The sampler: successes and requests at the fake, every 50 ms.
	type sample struct {
		at       time.Time
		ok, reqs int64
		enqueued int
	}
	var (
		mu       sync.Mutex
		samples  []sample
		ids      []string
		enqueued int
	)
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			st := fake.Stats()
			mu.Lock()
			samples = append(samples, sample{at: time.Now(), ok: st.ByStatus["200"], reqs: st.Requests, enqueued: enqueued})
			mu.Unlock()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()

	// The steady load, with the outage in its middle.
	start := time.Now()
	outageAt, recoverAt := start.Add(p.warmup), start.Add(p.warmup+p.outage)
	end := recoverAt.Add(p.tail)
	var reqsAtOutage, reqsAtRecovery int64
	interval := time.Duration(float64(time.Second) / p.rate)
	inOutage := false
	for n := 0; ; n++ {
		due := start.Add(time.Duration(n) * interval)
		if !due.Before(end) {
			break
		}
		time.Sleep(time.Until(due))
		now := time.Now()
		if !inOutage && !now.Before(outageAt) && now.Before(recoverAt) {
			reqsAtOutage = fake.Stats().Requests
			if err := fake.SetFaults("503x1000000000"); err != nil {
				return f, err
			}
			outageAt, inOutage = time.Now(), true
		}
		if inOutage && !now.Before(recoverAt) {
			if err := fake.SetFaults(""); err != nil {
				return f, err
			}
			recoverAt, inOutage = time.Now(), false
			reqsAtRecovery = fake.Stats().Requests
		}
		jid := fmt.Sprintf("o%s-%05d", id, n)
		body := fmt.Sprintf(`{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"steady prompt %d"}]}`, n)
		if _, err := prod.Enqueue(ctx, &jobs.Job{ID: jid, BatchID: "outage", Body: json.RawMessage(body)}); err != nil {
			return f, fmt.Errorf("enqueue: %w", err)
		}
		mu.Lock()
		ids, enqueued = append(ids, jid), enqueued+1
		mu.Unlock()
	}
	f.enqueued = len(ids)
	f.callsDuring = reqsAtRecovery - reqsAtOutage

	// Drain: every job has a result or is dead-lettered.
	drainErr := waitFor(90*time.Second, "the fleet to drain the queue", func() bool {
		bs, err := prod.Batch(ctx, "outage")
		qi, qerr := insp.GetQueueInfo(env.Queue)
		return err == nil && qerr == nil && bs.Succeeded+bs.Failed >= f.enqueued && qi.Pending+qi.Active+qi.Scheduled+qi.Retry == 0
	})
	close(done)
	<-sampled
	stop()

	store := prod.Store()
	for _, jid := range ids {
		r, err := store.Get(ctx, jid)
		switch {
		case err != nil:
			f.lost++
		case r.Status == jobs.StatusSucceeded:
			f.succeeded++
			if b := r.Attempts - 1; b > 0 {
				f.burnedTotal += b
				f.jobsBurned++
				f.burnedMax = max(f.burnedMax, b)
			}
		default:
			f.deadLettered++
		}
	}
	if qi, err := insp.GetQueueInfo(env.Queue); err == nil {
		// A job without a result that sits archived is dead-lettered, not
		// lost.
		extra := min(qi.Archived-f.deadLettered, f.lost)
		if extra > 0 {
			f.deadLettered += extra
			f.lost -= extra
		}
	}

	// Throughput: the pre-outage success rate, then how soon after
	// recovery it came back.
	mu.Lock()
	defer mu.Unlock()
	okAt := func(t time.Time) (int64, int) { // successes and enqueued at the last sample not after t
		var ok int64
		enq := 0
		for _, s := range samples {
			if s.at.After(t) {
				break
			}
			ok, enq = s.ok, s.enqueued
		}
		return ok, enq
	}
	o1, _ := okAt(outageAt.Add(-3 * time.Second))
	o2, _ := okAt(outageAt)
	f.preRate = float64(o2-o1) / 3
	okRec, enqRec := okAt(recoverAt)
	const win = 500 * time.Millisecond
	f.firstSuccess, f.fullThroughput, f.drained = -1, -1, -1
	for _, s := range samples {
		if s.at.Before(recoverAt) {
			continue
		}
		if f.firstSuccess < 0 && s.ok > okRec {
			f.firstSuccess = s.at.Sub(recoverAt)
		}
		if f.fullThroughput < 0 {
			w0, _ := okAt(s.at.Add(-win))
			if float64(s.ok-w0) >= 0.9*f.preRate*win.Seconds() {
				// From the window's start, or the first success if later.
				f.fullThroughput = max(s.at.Add(-win).Sub(recoverAt), f.firstSuccess, 0)
			}
		}
		if f.drained < 0 && s.ok >= int64(enqRec) {
			f.drained = s.at.Sub(recoverAt)
		}
	}
	f.outageOpenPeriod = int(math.Ceil(p.outage.Seconds() / p.open.Seconds()))
	for _, path := range logs {
		opens, failed, err := transitions(path)
		if err != nil {
			return f, err
		}
		f.opens += opens
		f.failedPr += failed
	}
	if drainErr != nil {
		return f, fmt.Errorf("%s: %w", mode, drainErr)
	}
	return f, nil
}

// transitions counts a worker log's breaker openings (closed->open) and
// failed probes (half_open->open).
func transitions(path string) (opens, failedProbes int, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct{ Event, From, To string }
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Event != "breaker" {
			continue
		}
		switch {
		case ev.From == "closed" && ev.To == "open":
			opens++
		case ev.From == "half_open" && ev.To == "open":
			failedProbes++
		}
	}
	return opens, failedProbes, sc.Err()
}

func report(p params, all []figures) {
	ms := func(d time.Duration) string {
		if d < 0 {
			return "never"
		}
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	target := p.failures + all[0].outageOpenPeriod
	fmt.Printf("%-34s %14s %14s\n", "", "shared", "per-process")
	row := func(name string, v func(f figures) string) {
		fmt.Printf("%-34s %14s %14s\n", name, v(all[0]), v(all[1]))
	}
	row("jobs enqueued", func(f figures) string { return fmt.Sprint(f.enqueued) })
	row("jobs succeeded", func(f figures) string { return fmt.Sprint(f.succeeded) })
	row("jobs lost", func(f figures) string { return fmt.Sprint(f.lost) })
	row("jobs dead-lettered", func(f figures) string { return fmt.Sprint(f.deadLettered) })
	row("upstream calls during outage", func(f figures) string { return fmt.Sprint(f.callsDuring) })
	row("breaker openings (closed->open)", func(f figures) string { return fmt.Sprint(f.opens) })
	row("failed probes (half_open->open)", func(f figures) string { return fmt.Sprint(f.failedPr) })
	row("attempts burned (total)", func(f figures) string { return fmt.Sprint(f.burnedTotal) })
	row("jobs that burned an attempt", func(f figures) string { return fmt.Sprint(f.jobsBurned) })
	row("attempts burned per job (max)", func(f figures) string { return fmt.Sprint(f.burnedMax) })
	row("attempts burned per job (mean)", func(f figures) string {
		return fmt.Sprintf("%.3f", float64(f.burnedTotal)/float64(max(f.enqueued, 1)))
	})
	row("pre-outage successes/s", func(f figures) string { return fmt.Sprintf("%.1f", f.preRate) })
	row("recovery -> first success", func(f figures) string { return ms(f.firstSuccess) })
	row("recovery -> full throughput", func(f figures) string { return ms(f.fullThroughput) })
	row("recovery -> backlog drained", func(f figures) string { return ms(f.drained) })
	sh, pp := all[0], all[1]
	fmt.Printf("\ntarget: calls during outage <= %d failures + %d probes (one per %s open period in %s) = %d: shared %d (%s), per-process %d\n",
		p.failures, sh.outageOpenPeriod, p.open, p.outage, target, sh.callsDuring, verdict(sh.callsDuring <= int64(target)), pp.callsDuring)
	fmt.Printf("target: recovery -> full throughput <= open + 1s = %s: shared %s (%s), per-process %s\n",
		ms(p.open+time.Second), ms(sh.fullThroughput), verdict(sh.fullThroughput >= 0 && sh.fullThroughput <= p.open+time.Second), ms(pp.fullThroughput))
	fmt.Printf("target: jobs lost = 0: shared %d (%s), per-process %d (%s)\n", sh.lost, verdict(sh.lost == 0), pp.lost, verdict(pp.lost == 0))
	if sh.callsDuring > 0 {
		fmt.Printf("ratio: per-process breakers made %.1fx the upstream calls during the outage and burned %.1fx the attempts\n",
			float64(pp.callsDuring)/float64(sh.callsDuring), float64(pp.burnedTotal)/math.Max(float64(sh.burnedTotal), 1))
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// waitFor polls cond every 50 ms until it holds or d passes.
func waitFor(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out after " + d.String() + " waiting for " + what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
