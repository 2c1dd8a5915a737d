package breaker

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/redisconn"
)

//go:embed allow.lua
var allowLua string

//go:embed record.lua
var recordLua string

//go:embed prune.lua
var pruneLua string

// State is a breaker's state.
type State string

// States of a breaker.
const (
	// Closed: calls go upstream; failures are counted in the rolling window.
	Closed State = "closed"
	// Open: no call goes upstream until the open interval ends.
	Open State = "open"
	// HalfOpen: the open interval ended; exactly one call of the fleet (the
	// probe) goes upstream, and its verdict closes or reopens the breaker.
	HalfOpen State = "half_open"
)

// Outcome is the verdict on a call the breaker allowed, as Record takes it.
type Outcome string

// Outcomes.
const (
	// Success: the upstream answered (any answer that is not a Failure,
	// including 4xx caused by the job and 429s). Closes a half-open breaker.
	Success Outcome = "success"
	// Failure: the failure policy counts it toward the breaker
	// (policy.Verdict.Breaker: 5xx, 529, 408, transport errors, timeouts).
	Failure Outcome = "failure"
	// Abandon: the call was not made or says nothing about the upstream
	// (shutdown, a budget wait). A probe's lease passes to the next caller.
	Abandon Outcome = "abandon"
)

// Defaults of Config's zero values: DESIGN.md's breaker, thresholds chosen
// from measurements (see doc.go).
const (
	// DefaultFailures: 5 failures in a row open the breaker. A full outage
	// opens it within 5 failed calls at any traffic; a 3 % failure rate
	// makes 5 in a row about once in 400 million calls.
	DefaultFailures = 5
	// DefaultFailureRate: half of the window's calls failing opens it ...
	DefaultFailureRate = 50
	// DefaultMinCalls: ... once the window holds at least 20 calls.
	DefaultMinCalls = 20
	// DefaultWindow is the rolling window of the failure rate.
	DefaultWindow = 60 * time.Second
	// DefaultOpen is how long the breaker stays open before its probe.
	DefaultOpen = 30 * time.Second
	// DefaultProbeLease is how long the probe owns the half-open period.
	DefaultProbeLease = 60 * time.Second
	// DefaultPrefix namespaces the Redis keys.
	DefaultPrefix = "llmq"
	// DefaultScope names the upstream.
	DefaultScope = "default"
	// WindowBuckets is the number of buckets the rolling window is counted
	// in (1 s each for a 60 s window): the window forgets 1/60 of its
	// calls at a time, never all at once at a boundary.
	WindowBuckets = 60
	// MaxClockSkew is how far the fleet's clocks may disagree: a bucket up
	// to this far ahead of a process's now still counts in its window (a
	// process whose clock runs ahead counted a call in it); fields further
	// ahead — from a window whose width changed with the config — are
	// removed.
	MaxClockSkew = time.Second
)

// Config configures a Breaker. Zero values take the documented defaults.
// Every process of a fleet must use the same Prefix, Scope and thresholds.
type Config struct {
	// Prefix namespaces the Redis keys (default "llmq").
	Prefix string
	// Scope names the upstream (account or endpoint) so that the same model
	// name on two upstreams has two breakers (default "default").
	Scope string
	// Failures is the number of counted failures in a row (no success
	// between them, fleet-wide) that opens the breaker (default 5): the
	// rule that opens it within a few calls of an outage, whatever the
	// traffic.
	Failures int
	// FailureRate is the percentage of the calls in Window that, failing,
	// opens the breaker (default 50), once Window holds at least MinCalls
	// calls (default 20): failsafe-go's WithFailureRateThreshold(rate,
	// minExecutions, period). It catches an upstream failing often but
	// not in a row; background noise stays far below it.
	FailureRate int
	// MinCalls is the volume the failure rate needs (default 20).
	MinCalls int
	// Window is the rolling window of the failure rate (default 60 s),
	// counted in WindowBuckets buckets.
	Window time.Duration
	// Open is how long the breaker stays open before its probe (default
	// 30 s).
	Open time.Duration
	// ProbeLease is how long the probe owns the half-open period: if its
	// verdict has not been recorded by then (its process died), the next
	// caller becomes the probe (default 60 s). Set it above the longest
	// upstream call.
	ProbeLease time.Duration
	// PerProcess gives this Breaker state of its own, shared with no other
	// process. It exists for the outage drill's baseline (what every
	// process tripping its own breaker costs); never set it in production.
	PerProcess bool
	// Now is the clock (default time.Now). All processes' clocks must agree
	// to well under a second, as for the fleet budget.
	Now func() time.Time
	// OnTransition, when set, is called after each state change this
	// process made (every change is made, and so reported, by exactly one
	// process of the fleet): closed→open when a failure trips it,
	// open→half_open when this process takes the probe, half_open→closed or
	// half_open→open on the probe's verdict. It must not block.
	OnTransition func(model string, from, to State)
}

// Permit is Allow's answer for one call.
type Permit struct {
	// Model is the breaker's model.
	Model string
	// Allowed reports that the call may go upstream.
	Allowed bool
	// Probe reports that the call is the half-open period's one probe: its
	// Record decides the breaker's state.
	Probe bool
	// State is the state Allow saw (HalfOpen for the probe).
	State State
	// RetryAt, when Allowed is false, is when to ask again: the end of the
	// open interval, or of the probe's lease while a probe is in flight.
	RetryAt time.Time
	// Started is when a failed call began, set by the caller before Record
	// for a failure that may be one slow call's rather than the model's: a
	// timeout (zero: every failure counts in a row). Such a failure counts
	// in the window but not as one more failure in a row when this process
	// saw the model answer after the call began and within the last window
	// bucket: calls that hang and time out together while others succeed
	// are noise. Fast failures always count, so an outage still opens the
	// breaker within Failures failed calls, and a model that stops
	// answering stops excusing timeouts a bucket later.
	Started time.Time
	token   string
}

// Status is a breaker's state at one instant, for `llmq status` and
// metrics.
type Status struct {
	// Model and Scope identify the breaker; Key is its Redis key.
	Model, Scope, Key string
	// State is the effective state at At: an open breaker whose interval
	// ended is HalfOpen (waiting for its probe).
	State State
	// At is the instant (from Config.Now) of the status.
	At time.Time
	// OpenUntil is the end of the open interval (zero unless open).
	OpenUntil time.Time
	// OpenedAt is when it last opened (zero if never).
	OpenedAt time.Time
	// ProbeUntil is the end of the probe's lease while a probe is in flight.
	ProbeUntil time.Time
	// Streak counts the failures in a row (closed only).
	Streak int64
	// Calls and Failures count the calls allowed and the failures recorded
	// in the rolling window (closed only).
	Calls, Failures int64
	// Trips counts how often it opened since its key was created.
	Trips int64
	// Reason says why it last opened: "consecutive" (Config.Failures in a
	// row), "rate" (Config.FailureRate), "probe" (the probe failed).
	Reason string
}

// Breaker is the per-model circuit breaker of one upstream, its state kept
// in Redis and shared by every process of the fleet. It is safe for
// concurrent use.
//
// Why not a library: failsafe-go's circuitbreaker keeps its state (and its
// rolling window) in process memory with no pluggable store, and
// sony/gobreaker's DistributedCircuitBreaker shares state by taking a Redis
// mutex and reading and writing the whole JSON state around every call (4
// round trips, a 500 ms sleep when the mutex is busy), reads time.Now (no
// injectable clock), and counts the half-open probe in that state with no
// lease, so a probe whose process dies leaves the breaker half-open for
// good. The state machine here is two small Lua scripts (allow.lua,
// record.lua): a hash of per-bucket counters (calls, failures) for the
// rolling window, a hash with the state, the failures in a row, the open
// interval's end and the probe's lease. A closed breaker's common path —
// count the call, end a streak — is plain commands the worker batches
// with its own (AllowIn, SuccessIn).
//
// Cost on the job's path: Allow is one round trip, and counts the call in
// the window (so the failure rate needs no record of successes). Record is
// one round trip for failures and probes; a success costs one only when
// this process last saw failures in a row to end, else none.
type Breaker struct {
	rdb    redis.UniversalClient
	cfg    Config
	allow  *redis.Script
	record *redis.Script
	prune  *redis.Script
	id     string // distinguishes this Breaker's probe tokens
	seq    atomic.Uint64
	scope  string        // the key scope: Scope, plus id when PerProcess
	width  time.Duration // a window bucket
	nb     int64         // buckets in the window
	ahead  int64         // buckets ahead of now still counted (MaxClockSkew)
	// streaks holds, per model, the failures in a row this process last
	// saw (from Allow and Record replies): a success is sent to Redis only
	// when there is a streak to end.
	streaks sync.Map // model -> *atomic.Int64
	// buckets holds, per model, the last bucket this process counted a
	// call in: the first call of each bucket runs prune.lua.
	buckets sync.Map // model -> *atomic.Int64
	// answers holds, per model, when this process last recorded a success:
	// see Permit.Started.
	answers sync.Map // model -> *lastAnswer
}

// lastAnswer is when a model last answered this process. A time.Time, not
// a number, so that comparisons use the monotonic clock (a wall clock
// stepped back by NTP excuses nothing).
type lastAnswer struct {
	mu sync.Mutex
	at time.Time
}

// answered returns model's lastAnswer, adding it.
func (b *Breaker) answered(model string) *lastAnswer { return perModel[lastAnswer](&b.answers, model) }

// note records an answer at now.
func (l *lastAnswer) note(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.After(l.at) {
		l.at = now
	}
}

// excuses reports whether a failed call that began at started is excused
// from the failures in a row: the model answered after it began, at most
// within before now (see Permit.Started).
func (l *lastAnswer) excuses(started, now time.Time, within time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !started.IsZero() && l.at.After(started) && now.Sub(l.at) <= within
}

// New returns a Breaker on rdb. It checks cfg, naming any invalid field; it
// does not contact Redis.
func New(rdb redis.UniversalClient, cfg Config) (*Breaker, error) {
	if rdb == nil {
		return nil, errors.New("breaker: the Redis client is nil: pass the fleet's Redis client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Scope == "" {
		cfg.Scope = DefaultScope
	}
	if cfg.Failures == 0 {
		cfg.Failures = DefaultFailures
	}
	if cfg.FailureRate == 0 {
		cfg.FailureRate = DefaultFailureRate
	}
	if cfg.MinCalls == 0 {
		cfg.MinCalls = DefaultMinCalls
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Open == 0 {
		cfg.Open = DefaultOpen
	}
	if cfg.ProbeLease == 0 {
		cfg.ProbeLease = DefaultProbeLease
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var errs []error
	if cfg.Failures < 1 {
		errs = append(errs, fmt.Errorf("breaker: failures is %d: set at least 1, or 0 for the default %d", cfg.Failures, DefaultFailures))
	}
	if cfg.FailureRate < 1 || cfg.FailureRate > 100 {
		errs = append(errs, fmt.Errorf("breaker: failure_rate is %d: set a percentage from 1 to 100, or 0 for the default %d", cfg.FailureRate, DefaultFailureRate))
	}
	if cfg.MinCalls < 1 {
		errs = append(errs, fmt.Errorf("breaker: min_calls is %d: set at least 1, or 0 for the default %d", cfg.MinCalls, DefaultMinCalls))
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"window", cfg.Window}, {"open", cfg.Open}, {"probe_lease", cfg.ProbeLease}} {
		if f.d < time.Millisecond {
			errs = append(errs, fmt.Errorf("breaker: %s is %s: set a positive duration of at least 1ms, or 0 for the default", f.name, f.d))
		}
	}
	if strings.ContainsAny(cfg.Scope, "{}") {
		errs = append(errs, fmt.Errorf("breaker: scope %q contains a brace: name the upstream without { or }", cfg.Scope))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("breaker: reading random bytes for probe tokens failed: %w", err)
	}
	br := &Breaker{rdb: rdb, cfg: cfg, allow: redis.NewScript(allowLua), record: redis.NewScript(recordLua), prune: redis.NewScript(pruneLua),
		id: hex.EncodeToString(b[:]), scope: cfg.Scope}
	br.nb = min(WindowBuckets, cfg.Window.Milliseconds())
	br.width = time.Duration((cfg.Window.Milliseconds()+br.nb-1)/br.nb) * time.Millisecond
	br.ahead = max(1, int64((MaxClockSkew+br.width-1)/br.width))
	if cfg.PerProcess {
		br.scope = cfg.Scope + "@" + br.id
	}
	return br, nil
}

// Config returns the configuration in effect, defaults applied.
func (b *Breaker) Config() Config { return b.cfg }

// Key returns the Redis key of model's state hash:
// <prefix>:breaker:{<scope>:<model>}. The rolling window is the same key
// with ":window" appended (same hash slot).
func (b *Breaker) Key(model string) string {
	return b.cfg.Prefix + ":breaker:{" + b.scope + ":" + model + "}"
}

// windowSuffix names the window hash beside the state hash.
const windowSuffix = ":window"

// Fields of the state hash read outside the scripts: the state (absent
// means closed) and the failures in a row (absent means 0).
const (
	stateField  = "state"
	streakField = "streak"
)

func (b *Breaker) windowKey(model string) string { return b.Key(model) + windowSuffix }

// perModel returns m's *T for model, adding a zero T.
func perModel[T any](m *sync.Map, model string) *T {
	if v, ok := m.Load(model); ok {
		return v.(*T)
	}
	v, _ := m.LoadOrStore(model, new(T))
	return v.(*T)
}

// streak returns this process's view of model's failures in a row.
func (b *Breaker) streak(model string) *atomic.Int64 {
	return perModel[atomic.Int64](&b.streaks, model)
}

// ttl is how long idle keys live: long enough that no state they hold can
// still matter.
func (b *Breaker) ttl() int64 {
	return (b.cfg.Window + b.cfg.Open + b.cfg.ProbeLease + time.Hour).Milliseconds()
}

// Allow says whether a call to model may go upstream now. A closed breaker
// allows every call and counts it in the rolling window; an open one none
// until its interval ends; then exactly one caller of the fleet gets the
// probe (Permit.Probe) until its verdict is recorded or its lease runs out.
// Every allowed call must be followed by Record with the same Permit. One
// Redis round trip, and another for the first call of each bucket in this
// process (prune.lua: see AllowIn).
func (b *Breaker) Allow(ctx context.Context, model string) (Permit, error) {
	now := b.cfg.Now()
	if b.advance(model, now.UnixMilli()/b.width.Milliseconds()) {
		// A failure here fails allow.lua below too, and the next bucket
		// prunes again.
		_ = b.prune.Run(ctx, b.rdb, []string{b.windowKey(model)}, b.pruneArgs(now)...).Err()
	}
	token := b.id + "-" + strconv.FormatUint(b.seq.Add(1), 10)
	res, err := b.allow.Run(ctx, b.rdb, []string{b.Key(model), b.windowKey(model)},
		now.UnixMilli(), b.cfg.ProbeLease.Milliseconds(), token, b.ttl(), b.width.Milliseconds(), b.nb).Slice()
	if err != nil {
		return Permit{Model: model}, fmt.Errorf("breaker: allow %q: %w (Redis unreachable? the job should wait and try again)", model, err)
	}
	if len(res) != 6 {
		return Permit{Model: model}, fmt.Errorf("breaker: allow %q: unexpected script reply %v", model, res)
	}
	p := Permit{Model: model, Allowed: toInt(res[0]) == 1, Probe: toInt(res[1]) == 1, State: State(toString(res[2]))}
	if at := toInt(res[3]); at > 0 {
		p.RetryAt = time.UnixMilli(at)
	}
	if p.Probe {
		p.token = token
	}
	if p.State == Closed {
		b.streak(model).Store(toInt(res[5]))
	}
	if from := toString(res[4]); from != "" {
		b.transition(model, State(from), p.State)
	}
	return p, nil
}

// Record reports the outcome of a call Allow permitted. In the closed
// state a Failure adds to the failures in a row and to the window's
// failures, and opens the breaker when either threshold is reached
// (Config.Failures in a row, or Config.FailureRate of at least
// Config.MinCalls calls); a Success ends the failures in a row. The
// probe's Success closes the breaker and its Failure reopens it for
// another open interval; an Abandon gives the probe's lease back.
//
// A Success costs a Redis round trip only when this process last saw
// failures in a row (from any Allow or Record of the model), else none;
// an Abandon of an ordinary call none. Record of a refused permit is a
// no-op.
func (b *Breaker) Record(ctx context.Context, p Permit, o Outcome) error {
	switch o {
	case Success, Failure, Abandon:
	default:
		return fmt.Errorf("breaker: record %q: unknown outcome %q: use Success, Failure or Abandon", p.Model, o)
	}
	if !p.Allowed {
		return nil
	}
	now := b.cfg.Now()
	if o == Success {
		b.answered(p.Model).note(now)
	}
	streak := b.streak(p.Model)
	if !p.Probe && (o == Abandon || (o == Success && streak.Load() == 0)) {
		return nil
	}
	excused := "0"
	if o == Failure && !p.Probe && b.answered(p.Model).excuses(p.Started, now, b.width) {
		excused = "1"
	}
	res, err := b.record.Run(ctx, b.rdb, []string{b.Key(p.Model), b.windowKey(p.Model)},
		now.UnixMilli(), string(o), p.token, b.cfg.Failures, b.cfg.FailureRate, b.cfg.MinCalls,
		b.cfg.Open.Milliseconds(), b.ttl(), b.width.Milliseconds(), b.nb, b.ahead, excused).Slice()
	if err != nil {
		return fmt.Errorf("breaker: record %s for %q: %w", o, p.Model, err)
	}
	if len(res) != 5 {
		return fmt.Errorf("breaker: record %s for %q: unexpected script reply %v", o, p.Model, res)
	}
	streak.Store(toInt(res[2]))
	if from, to := toString(res[0]), toString(res[1]); from != "" {
		b.transition(p.Model, State(from), State(to))
	}
	return nil
}

func (b *Breaker) transition(model string, from, to State) {
	if b.cfg.OnTransition != nil {
		b.cfg.OnTransition(model, from, to)
	}
}

// Status returns model's breaker state now. One Redis round trip.
func (b *Breaker) Status(ctx context.Context, model string) (Status, error) {
	return b.status(ctx, b.Key(model), b.scope, model)
}

func (b *Breaker) status(ctx context.Context, key, scope, model string) (Status, error) {
	now := b.cfg.Now()
	pipe := b.rdb.Pipeline()
	h := pipe.HGetAll(ctx, key)
	win := pipe.HGetAll(ctx, key+windowSuffix)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Status{}, fmt.Errorf("breaker: read state of %q: %w", model, err)
	}
	m := h.Val()
	st := Status{Model: model, Scope: scope, Key: key, At: now, State: Closed, Trips: atoi(m["trips"]), Reason: m["reason"]}
	if at := atoi(m["opened_at"]); at > 0 {
		st.OpenedAt = time.UnixMilli(at)
	}
	switch State(m[stateField]) {
	case Open:
		st.State, st.OpenUntil = Open, time.UnixMilli(atoi(m["open_until"]))
		if !now.Before(st.OpenUntil) {
			st.State = HalfOpen
		}
	case HalfOpen:
		st.State = HalfOpen
		if lu := time.UnixMilli(atoi(m["lease_until"])); now.Before(lu) {
			st.ProbeUntil = lu
		}
	default:
		st.Streak = atoi(m[streakField])
		st.Calls, st.Failures = b.windowCounts(win.Val(), now)
	}
	return st, nil
}

// windowCounts sums the window hash's buckets that are still in the
// window at now, as record.lua does.
func (b *Breaker) windowCounts(window map[string]string, now time.Time) (calls, failures int64) {
	bucket := now.UnixMilli() / b.width.Milliseconds()
	for f, v := range window {
		if len(f) < 2 || (f[0] != 'c' && f[0] != 'f') {
			continue
		}
		n, err := strconv.ParseInt(f[1:], 10, 64)
		if err != nil || n <= bucket-b.nb || n > bucket+b.ahead { // as record.lua
			continue
		}
		if f[0] == 'c' {
			calls += atoi(v)
		} else {
			failures += atoi(v)
		}
	}
	return max(calls, failures), failures
}

// List returns the status of every breaker of this Scope that has state in
// Redis (a model that never failed has none: it is closed), sorted by key.
// It scans keys (every master of a cluster): meant for operators, not for
// the job path.
func (b *Breaker) List(ctx context.Context) ([]Status, error) {
	prefix := b.cfg.Prefix + ":breaker:{" + b.scope + ":"
	if b.cfg.PerProcess {
		prefix = b.cfg.Prefix + ":breaker:{" + b.cfg.Scope + "@"
	}
	seen := map[string]bool{}
	var out []Status
	keys, err := redisconn.Scan(ctx, b.rdb, escapeGlob(prefix)+"*")
	if err != nil {
		return nil, fmt.Errorf("breaker: list breakers under %q: %w", prefix, err)
	}
	for _, k := range keys {
		key := strings.TrimSuffix(k, windowSuffix)
		if seen[key] || !strings.HasSuffix(key, "}") {
			continue
		}
		seen[key] = true
		model, scope := strings.TrimSuffix(key[len(prefix):], "}"), b.scope
		if b.cfg.PerProcess {
			var id string
			id, model, _ = strings.Cut(model, ":") // <id>:<model>
			scope = b.cfg.Scope + "@" + id
		}
		st, err := b.status(ctx, key, scope, model)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y Status) int { return strings.Compare(x.Key, y.Key) })
	return out, nil
}

// Await waits while model's probe is in flight, reading the state every
// poll, for at most max: callers refused during a probe can go on the moment
// it closes the breaker instead of being rescheduled. It returns the last
// status read: Closed (call Allow again), Open (wait until OpenUntil), or
// HalfOpen when max passed first. It makes at most max/poll + 1 reads.
func (b *Breaker) Await(ctx context.Context, model string, max, poll time.Duration) (Status, error) {
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		st, err := b.Status(ctx, model)
		if err != nil || st.State != HalfOpen || st.ProbeUntil.IsZero() {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-deadline.C:
			return st, nil
		case <-tick.C:
		}
	}
}

// escapeGlob escapes Redis glob metacharacters.
func escapeGlob(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`)
	return r.Replace(s)
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		return atoi(x)
	}
	return 0
}

func toString(v any) string {
	s, _ := v.(string)
	return s
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
