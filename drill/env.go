package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/llmqtest/fleet"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/redisconn"
	"github.com/llmq/llmq/redistopo"
	"github.com/llmq/llmq/results"
)

// Size selects a drill's scale.
type Size int

// Sizes.
const (
	// Short is the CI form: small counts, a few seconds per drill.
	Short Size = iota
	// Long is the full form of `make drill` (LLMQ_DRILL=long).
	Long
)

func (s Size) String() string {
	if s == Long {
		return "long"
	}
	return "short"
}

// pick returns short or long by size.
func (s Size) pick(short, long int) int {
	if s == Long {
		return long
	}
	return short
}

// Options says where and at what scale a drill runs.
type Options struct {
	// Bin is the llmq binary the workers run. Required.
	Bin string
	// Dir is a scratch directory (Redis data, configs, worker logs); the
	// drill makes a subdirectory of its own. Required.
	Dir string
	// Size is the scale (default Short).
	Size Size
	// Progress receives a line per drill step (nil: discarded).
	Progress io.Writer
	// Seed seeds the drill's random choices (0: random); the Report names
	// it so a run can be repeated.
	Seed uint64
}

// setup is what a drill's environment looks like.
type setup struct {
	name  string
	fake  fakeupstream.Config
	fsync string // Redis AOF: "" none, "always", "everysec"
	// apiKey is the key the workers send (default a dull one).
	apiKey string
	// concurrency per worker process.
	concurrency int
	// shutdown is the workers' graceful shutdown timeout (default 5s).
	shutdown time.Duration
	// headerTimeout is the upstream response-header timeout (default 2s).
	headerTimeout time.Duration
	// retryBase and retryCap shape the backoff (default 50ms, 500ms).
	retryBase, retryCap time.Duration
	// rpm and tpm set a fleet budget (0: none).
	rpm, tpm int64
	// configure, when set, changes the workers' settings last.
	configure func(*config.Config)
	// topology is the drill's Redis: "" one redis-server, "cluster" a
	// 3-master + 3-replica Redis Cluster, "sentinel" a master, a replica
	// and three Sentinels (package redistopo).
	topology string
}

// env is one drill's world: its own Redis, the fake upstream over real
// HTTP (with a per-job record of what it answered), a producer, and llmq
// worker processes started on demand.
type env struct {
	o     Options
	s     setup
	dir   string
	redis *redistopo.Server      // the one redis-server (topology "")
	clu   *redistopo.Cluster     // topology "cluster"
	sen   *redistopo.SentinelSet // topology "sentinel"
	conn  *redisconn.Conn        // redisURL, parsed
	// redisURL is the URL the workers and the producer use.
	redisURL string
	rdb      redis.UniversalClient
	insp     *asynq.Inspector
	prod     *producer.Producer
	store    *results.Store
	fake     *fakeupstream.Server
	calls    *callLog
	http     *http.Server
	url      string
	prefix   string
	queue    string
	fleet    *fleet.Fleet // the llmq worker processes
}

// newEnv builds a drill's environment; close it with env.close.
func newEnv(ctx context.Context, o Options, s setup) (_ *env, err error) {
	if o.Bin == "" || o.Dir == "" {
		return nil, errors.New("drill: Options.Bin and Options.Dir are required")
	}
	if _, err := os.Stat(o.Bin); err != nil {
		return nil, fmt.Errorf("drill: llmq binary: %w (run `make build`)", err)
	}
	if s.apiKey == "" {
		s.apiKey = "sk-drill-plain-key-0000"
	}
	if s.concurrency == 0 {
		s.concurrency = 4
	}
	if s.shutdown == 0 {
		s.shutdown = 5 * time.Second
	}
	if s.headerTimeout == 0 {
		s.headerTimeout = 2 * time.Second
	}
	if s.retryBase == 0 {
		s.retryBase, s.retryCap = 50*time.Millisecond, 500*time.Millisecond
	}
	dir, err := os.MkdirTemp(o.Dir, s.name+"-")
	if err != nil {
		return nil, fmt.Errorf("drill: scratch dir: %w", err)
	}
	id := llmqtest.Suffix()
	e := &env{o: o, s: s, dir: dir, prefix: "drill-" + id, queue: "drill-" + id}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	var url string
	switch s.topology {
	case "cluster":
		if e.clu, err = redistopo.StartCluster(ctx, filepath.Join(dir, "redis"), redistopo.ClusterConfig{}); err != nil {
			return nil, err
		}
		url = e.clu.URL()
	case "sentinel":
		if e.sen, err = redistopo.StartSentinel(ctx, filepath.Join(dir, "redis"), redistopo.SentinelConfig{}); err != nil {
			return nil, err
		}
		url = e.sen.URL()
	default:
		if e.redis, err = startRedis(ctx, filepath.Join(dir, "redis"), s.fsync); err != nil {
			return nil, err
		}
		url = "redis://" + e.redis.Addr + "/0"
	}
	e.redisURL = url
	if e.conn, err = redisconn.Parse(url); err != nil {
		return nil, err
	}
	e.rdb = e.conn.NewClient()
	opt := e.conn.AsynqOpt()
	e.insp = asynq.NewInspector(opt)
	if e.prod, err = producer.New(opt, producer.WithQueue(e.queue), producer.WithPrefix(e.prefix),
		producer.WithRetention(time.Hour), producer.WithResultTTL(time.Hour)); err != nil {
		return nil, err
	}
	e.store = e.prod.Store()
	if e.fake, err = fakeupstream.New(s.fake); err != nil {
		return nil, err
	}
	e.calls = newCallLog()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("drill: fake upstream listener: %w", err)
	}
	e.http = &http.Server{Handler: e.calls.wrap(e.fake.Handler()), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = e.http.Serve(ln) }()
	e.url = "http://" + ln.Addr().String() + "/v1"
	if e.fleet, err = fleet.New(fleet.Config{Bin: o.Bin, Dir: dir, Settings: e.settings(), APIKey: s.apiKey, Metrics: true}); err != nil {
		return nil, fmt.Errorf("drill: %w", err)
	}
	return e, nil
}

// settings is the workers' configuration: the drill's queue and prefix,
// short delays so faults resolve within a drill.
func (e *env) settings() config.Config {
	c := fleet.Settings(e.redisURL, e.url, e.prefix, e.queue)
	c.Worker.Concurrency = e.s.concurrency
	c.Worker.ShutdownTimeout = e.s.shutdown
	c.Upstream.ConnectTimeout, c.Upstream.ResponseHeaderTimeout, c.Upstream.CallTimeout = time.Second, e.s.headerTimeout, 30*time.Second
	c.Upstream.FirstByteTimeout = e.s.headerTimeout // calls stream: the same wait for the first byte
	c.Retry.Base, c.Retry.Cap, c.Retry.RetryAfterCap = e.s.retryBase, e.s.retryCap, 5*time.Second
	// The breaker keeps its production thresholds but opens for 2 s
	// instead of 30 s: time scaled like the retry delays.
	c.Breaker.Open = 2 * time.Second
	if e.s.rpm > 0 || e.s.tpm > 0 {
		c.Budgets = map[string]config.Budget{"default": {RPM: e.s.rpm, TPM: e.s.tpm}}
	}
	c.Results.TTL, c.Results.Retention = time.Hour, time.Hour
	c.Log.Level, c.Log.Environment = "info", "drill"
	if e.s.configure != nil {
		e.s.configure(&c)
	}
	return c
}

// logf writes a progress line.
func (e *env) logf(format string, args ...any) {
	if e.o.Progress != nil {
		fmt.Fprintf(e.o.Progress, "[%s] %s\n", e.s.name, fmt.Sprintf(format, args...))
	}
}

// close stops every process the drill started and frees its resources.
// The scratch directory stays for post-mortems unless the drill passed and
// the caller removes it.
func (e *env) close() {
	if e.fleet != nil {
		_ = e.fleet.Close()
	}
	if e.fake != nil {
		e.fake.Close()
	}
	if e.http != nil {
		_ = e.http.Close()
	}
	if e.prod != nil {
		_ = e.prod.Close()
	}
	if e.insp != nil {
		_ = e.insp.Close()
	}
	if e.rdb != nil {
		_ = e.rdb.Close()
	}
	if e.redis != nil {
		e.redis.Kill()
	}
	if e.clu != nil {
		e.clu.Close()
	}
	if e.sen != nil {
		e.sen.Close()
	}
}

// cli runs `llmq args...` to completion with the drill's environment.
func (e *env) cli(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	cmd := e.fleet.Command(ctx, args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("llmq %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}

// callLog records, per job, what the fake upstream answered: the drill's
// prompts carry a marker "drill-job:<custom_id>".
type callLog struct {
	mu    sync.Mutex
	calls map[string]int // requests per job
	oks   map[string]int // 200 answers per job
	// okTimes are the start and end of every 200 answer, in order of end.
	okTimes [][2]time.Time
	// spans are the arrival and end of every request, in order of end.
	spans [][2]time.Time
}

func newCallLog() *callLog {
	return &callLog{calls: map[string]int{}, oks: map[string]int{}}
}

var markerRE = regexp.MustCompile(`drill-job:([A-Za-z0-9_-]+)`)

// wrap returns h recording every chat-completions request.
func (l *callLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/chat/completions") {
			h.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		job := ""
		if m := markerRE.FindSubmatch(body[:min(len(body), 4096)]); m != nil {
			job = string(m[1])
		}
		sw := &fakeupstream.StatusRecorder{ResponseWriter: w}
		start := time.Now()
		h.ServeHTTP(sw, r)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.calls[job]++
		l.spans = append(l.spans, [2]time.Time{start, time.Now()})
		if sw.Status == http.StatusOK {
			l.oks[job]++
			l.okTimes = append(l.okTimes, [2]time.Time{start, time.Now()})
		}
	})
}

// duplicates returns how many jobs were answered 200 more than once (paid
// twice), and the total extra 200s.
func (l *callLog) duplicates() (jobs, extra int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.oks {
		if n > 1 {
			jobs++
			extra += n - 1
		}
	}
	return jobs, extra
}

// duplicated returns up to max jobs (custom ids) answered 200 more than
// once, sorted.
func (l *callLog) duplicated(max int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for id, n := range l.oks {
		if n > 1 {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids[:min(len(ids), max)]
}

// workerLines returns the workers' log lines that mention s, at most max.
func (e *env) workerLines(s string, max int) []string {
	var out []string
	for _, w := range e.fleet.Workers() {
		for _, line := range strings.Split(w.Log(), "\n") {
			if strings.Contains(line, s) && len(out) < max {
				out = append(out, fmt.Sprintf("worker %d: %s", w.N, line))
			}
		}
	}
	return out
}

// firstOKStartedAfter returns when the first 200 answer to a request sent
// after t ended (zero if none): a job dequeued after t was served.
func (l *callLog) firstOKStartedAfter(t time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.okTimes {
		if c[0].After(t) {
			return c[1]
		}
	}
	return time.Time{}
}

// arrived returns the spans of the requests that arrived in [from, to).
func (l *callLog) arrived(from, to time.Time) [][2]time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out [][2]time.Time
	for _, s := range l.spans {
		if !s[0].Before(from) && s[0].Before(to) {
			out = append(out, s)
		}
	}
	return out
}

// peakInFlight returns the most requests the fake was answering at once
// among those that arrived in [from, to).
func (l *callLog) peakInFlight(from, to time.Time) int {
	type edge struct {
		at   time.Time
		step int
	}
	var edges []edge
	for _, s := range l.arrived(from, to) {
		edges = append(edges, edge{s[0], 1}, edge{s[1], -1})
	}
	// At equal instants an end comes before an arrival: back to back is
	// not at once.
	sort.Slice(edges, func(i, j int) bool {
		return edges[i].at.Before(edges[j].at) || edges[i].at.Equal(edges[j].at) && edges[i].step < edges[j].step
	})
	peak, n := 0, 0
	for _, e := range edges {
		n += e.step
		peak = max(peak, n)
	}
	return peak
}

// requests returns the number of chat-completions requests recorded.
func (l *callLog) requests() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.calls {
		n += c
	}
	return n
}
