package metrics

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmq/llmq/policy"
)

// Job outcomes, the values of llmq_jobs_total's outcome label: what one
// handler run told asynq to do.
const (
	// JobSucceeded: the result is stored.
	JobSucceeded = "succeeded"
	// JobDeadLetter: archived with a reason (asynq SkipRetry).
	JobDeadLetter = "dead_letter"
	// JobRetry: run again later; an attempt is burned.
	JobRetry = "retry"
	// JobSnoozed: run again later without burning an attempt (rate limited,
	// budget wait, hold, breaker open).
	JobSnoozed = "snoozed"
	// JobError: the run ended with an error that carries no verdict (worker
	// shutting down, context ended); asynq retries it.
	JobError = "error"
)

// Breaker states, as BreakerState accepts them, and the values
// llmq_breaker_state reports for them.
const (
	BreakerClosed   = "closed"    // 0
	BreakerHalfOpen = "half_open" // 1
	BreakerOpen     = "open"      // 2
)

// Token kinds, the values of llmq_tokens_total's kind label.
const (
	TokensPrompt     = "prompt"
	TokensCompletion = "completion"
	TokensEstimated  = "estimated"
)

// maxTracked bounds how many distinct models (and accounts) the scrape-time
// collectors follow, so a producer inventing model names cannot grow a
// worker's memory or its scrape without limit.
const maxTracked = 64

// Config configures New. Every field is optional.
type Config struct {
	// Version and Build label llmq_build_info (default "dev", "unknown").
	Version, Build string
	// Environment labels llmq_build_info too (e.g. "prod"); empty is left out.
	Environment string
}

// Metrics is one process's instrumentation. Create it with New; a nil
// *Metrics is valid and records nothing. It is safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	upstreamRequests   *prometheus.CounterVec
	upstreamDuration   *prometheus.HistogramVec
	tokens             *prometheus.CounterVec
	budgetWait         *prometheus.HistogramVec
	rateLimited        *prometheus.CounterVec
	holdActive         *prometheus.GaugeVec
	holdsPlaced        *prometheus.CounterVec
	breakerState       *prometheus.GaugeVec
	breakerTransitions *prometheus.CounterVec
	jobs               *prometheus.CounterVec
	retries            prometheus.Counter
	deadLetters        *prometheus.CounterVec
	cacheHits          *prometheus.CounterVec
	collectorErrors    *prometheus.CounterVec

	series seriesCache // the job path's series, looked up once

	mu          sync.Mutex
	models      map[string]bool            // models seen, for the budget collector
	holds       map[string]map[string]bool // account -> classes ever reported
	holdSrc     HoldSource                 // set by WatchHold
	breakerSrc  BreakerSource              // set by WatchBreakers
	holdAccount string
}

// New returns Metrics with every llmq metric, the Go runtime and process
// collectors and llmq_build_info registered in a registry of its own.
func New(cfg Config) *Metrics {
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.Build == "" {
		cfg.Build = "unknown"
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_upstream_requests_total",
			Help: "Upstream chat-completion calls, by model, HTTP status class (2xx, 4xx, 5xx, or none when no response came), the failure policy's class and its verdict for the call (fallback: next tier, else the class's fallback-less outcome).",
		}, []string{"model", "status_class", "class", "outcome"}),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmq_upstream_request_duration_seconds",
			Help:    "Duration of upstream chat-completion calls, response body included, by model.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300},
		}, []string{"model"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_tokens_total",
			Help: "Tokens by model and kind: prompt and completion as the upstream reported them, estimated as charged to the budget before the call.",
		}, []string{"model", "kind"}),
		budgetWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmq_budget_wait_seconds",
			Help:    "Time a job blocked waiting for the fleet-wide budget before its upstream call, by model.",
			Buckets: []float64{0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60},
		}, []string{"model"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_rate_limited_total",
			Help: "Upstream 429 rate-limit answers (not quota), each of which cooled the fleet down, by model.",
		}, []string{"model"}),
		holdActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_hold_active",
			Help: "1 while the account is on a fleet-wide hold for class (auth: key rejected; quota: insufficient_quota), else 0.",
		}, []string{"account", "class"}),
		holdsPlaced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_holds_placed_total",
			Help: "Fleet-wide holds this process placed, by account and class.",
		}, []string{"account", "class"}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_breaker_state",
			Help: "Circuit breaker state per model: 0 closed, 1 half-open, 2 open.",
		}, []string{"model"}),
		breakerTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_breaker_transitions_total",
			Help: "Circuit breaker state changes per model.",
		}, []string{"model", "from", "to"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_jobs_total",
			Help: "Handler runs by outcome: succeeded, dead_letter, retry (attempt burned), snoozed (no attempt burned), error (shutdown).",
		}, []string{"outcome"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmq_retries_total",
			Help: "Jobs sent back to asynq for another attempt after a retryable failure.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_dead_letters_total",
			Help: "Jobs archived as dead letters, by failure class.",
		}, []string{"class"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_cache_hits_total",
			Help: "Jobs served from the response cache instead of an upstream call, by model.",
		}, []string{"model"}),
		collectorErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_collector_errors_total",
			Help: "Scrape-time reads that failed (Redis unreachable or slow), by collector: queues, budget, hold.",
		}, []string{"collector"}),
		models: map[string]bool{},
		holds:  map[string]map[string]bool{},
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "llmq_build_info",
		Help:        "Always 1; labels name the running llmq version, build and environment.",
		ConstLabels: prometheus.Labels{"version": Label(cfg.Version), "build": Label(cfg.Build), "env": Label(cfg.Environment)},
	})
	info.Set(1)
	m.reg.MustRegister(m.upstreamRequests, m.upstreamDuration, m.tokens, m.budgetWait, m.rateLimited,
		holdCollector{m}, m.holdsPlaced, breakerCollector{m}, m.breakerTransitions, m.jobs, m.retries, m.deadLetters,
		m.cacheHits, m.collectorErrors, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Outcomes exist at zero from the start, so rate() and alerts see them
	// before the first job.
	for _, o := range []string{JobSucceeded, JobDeadLetter, JobRetry, JobSnoozed, JobError} {
		m.jobs.WithLabelValues(o)
	}
	for _, c := range []string{"queues", "budget", "hold"} {
		m.collectorErrors.WithLabelValues(c)
	}
	return m
}

// Registry returns the registry every metric is in, to add collectors or to
// gather in tests. Nil for a nil *Metrics.
func (m *Metrics) Registry() *prometheus.Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// Handler returns the /metrics handler (Prometheus text or OpenMetrics, as
// the scraper asks). A nil *Metrics serves 404.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}

// StatusClass returns the status_class label of an HTTP status: "2xx",
// "4xx", "5xx" (any 1xx-5xx class), or "none" when no response came (0:
// connect failure, timeout, reset).
func StatusClass(status int) string {
	if status < 100 || status > 599 {
		return "none"
	}
	return strconv.Itoa(status/100) + "xx"
}

// UpstreamCall records one upstream call: its model, HTTP status (0 when no
// response came), the policy's failure class and outcome, and how long it
// took.
func (m *Metrics) UpstreamCall(model string, status int, class, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	sc := StatusClass(status)
	cached(m, seriesKey{metric: seriesRequests, model: model, status: sc, class: class, outcome: outcome}, func() prometheus.Counter {
		return m.upstreamRequests.WithLabelValues(m.seeModel(model), sc, Label(class), Label(outcome))
	}).Inc()
	cached(m, seriesKey{metric: seriesDuration, model: model}, func() prometheus.Observer {
		return m.upstreamDuration.WithLabelValues(m.seeModel(model))
	}).Observe(d.Seconds())
}

// Tokens adds n tokens of kind (TokensPrompt, TokensCompletion,
// TokensEstimated) for model. n ≤ 0 records nothing.
func (m *Metrics) Tokens(model, kind string, n int) {
	if m == nil || n <= 0 {
		return
	}
	cached(m, seriesKey{metric: seriesTokens, model: model, kind: kind}, func() prometheus.Counter {
		return m.tokens.WithLabelValues(m.seeModel(model), Label(kind))
	}).Add(float64(n))
}

// BudgetWait records how long a job blocked for model's fleet-wide budget
// (zero when it was granted at once).
func (m *Metrics) BudgetWait(model string, d time.Duration) {
	if m == nil {
		return
	}
	m.budgetWait.WithLabelValues(m.seeModel(model)).Observe(max(d, 0).Seconds())
}

// RateLimited counts one 429 rate-limit answer for model.
func (m *Metrics) RateLimited(model string) {
	if m == nil {
		return
	}
	m.rateLimited.WithLabelValues(m.seeModel(model)).Inc()
}

// HoldActive reports that account is on hold for class: llmq_hold_active is
// 1 for that class and 0 for the account's other classes.
func (m *Metrics) HoldActive(account, class string) {
	if m == nil {
		return
	}
	account, class = Label(account), Label(class)
	m.mu.Lock()
	defer m.mu.Unlock()
	cs := m.holdClassesLocked(account)
	if cs == nil {
		return
	}
	cs[class] = true
	for c := range cs {
		v := 0.0
		if c == class {
			v = 1
		}
		m.holdActive.WithLabelValues(account, c).Set(v)
	}
}

// HoldLifted reports that account is not on hold: llmq_hold_active is 0 for
// every class.
func (m *Metrics) HoldLifted(account string) {
	if m == nil {
		return
	}
	account = Label(account)
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.holdClassesLocked(account) {
		m.holdActive.WithLabelValues(account, c).Set(0)
	}
}

// HoldPlaced counts a hold this process placed on account for class and
// reports it active.
func (m *Metrics) HoldPlaced(account, class string) {
	if m == nil {
		return
	}
	m.holdsPlaced.WithLabelValues(Label(account), Label(class)).Inc()
	m.HoldActive(account, class)
}

// holdClassesLocked returns the classes tracked for account, starting with
// the two hold classes so both series exist at 0; nil when too many
// accounts are tracked already.
func (m *Metrics) holdClassesLocked(account string) map[string]bool {
	cs, ok := m.holds[account]
	if !ok {
		if len(m.holds) >= maxTracked {
			return nil
		}
		cs = map[string]bool{policy.ClassAuth: true, policy.ClassQuota: true}
		m.holds[account] = cs
	}
	return cs
}

// BreakerState reports model's circuit breaker state: BreakerClosed,
// BreakerHalfOpen ("half-open" is accepted too) or BreakerOpen (the
// breaker package's State values). Other values are ignored.
func (m *Metrics) BreakerState(model, state string) {
	if m == nil {
		return
	}
	v, ok := breakerValue(state)
	if !ok {
		return
	}
	m.breakerState.WithLabelValues(m.seeModel(model)).Set(v)
}

// BreakerTransition counts model's breaker moving from one state to another
// and reports the new state.
func (m *Metrics) BreakerTransition(model, from, to string) {
	if m == nil {
		return
	}
	m.breakerTransitions.WithLabelValues(m.seeModel(model), breakerName(from), breakerName(to)).Inc()
	m.BreakerState(model, to)
}

func breakerValue(state string) (float64, bool) {
	switch breakerName(state) {
	case BreakerClosed:
		return 0, true
	case BreakerHalfOpen:
		return 1, true
	case BreakerOpen:
		return 2, true
	}
	return 0, false
}

func breakerName(state string) string {
	switch state {
	case "half_open", "halfopen", "half-open", "HalfOpen":
		return BreakerHalfOpen
	case "Closed":
		return BreakerClosed
	case "Open":
		return BreakerOpen
	}
	return Label(state)
}

// Job counts one handler run by outcome (JobSucceeded, JobDeadLetter,
// JobRetry, JobSnoozed, JobError). A JobRetry also counts in
// llmq_retries_total.
func (m *Metrics) Job(outcome string) {
	if m == nil {
		return
	}
	cached(m, seriesKey{metric: seriesJobs, outcome: outcome}, func() prometheus.Counter {
		return m.jobs.WithLabelValues(Label(outcome))
	}).Inc()
	if outcome == JobRetry {
		m.retries.Inc()
	}
}

// DeadLetter counts one job archived for class.
func (m *Metrics) DeadLetter(class string) {
	if m == nil {
		return
	}
	m.deadLetters.WithLabelValues(Label(class)).Inc()
}

// CacheHit counts one job of model served from the response cache.
func (m *Metrics) CacheHit(model string) {
	if m == nil {
		return
	}
	m.cacheHits.WithLabelValues(m.seeModel(model)).Inc()
}

// seeModel returns model's label value and remembers it for the budget
// collector (up to maxTracked models).
func (m *Metrics) seeModel(model string) string {
	l := Label(model)
	m.mu.Lock()
	if len(m.models) < maxTracked && l != "other" && l != "unknown" {
		m.models[l] = true
	}
	m.mu.Unlock()
	return l
}

// seenModels returns the models seen so far.
func (m *Metrics) seenModels() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.models))
	for k := range m.models {
		out = append(out, k)
	}
	return out
}

// Label returns s as a safe label value: s itself when it is a short
// identifier (at most 64 of A-Z a-z 0-9 . _ - : / @ +), "unknown" when it is
// empty, and "other" for anything else, so free text such as a prompt, or an
// OpenAI-style key ("sk-...") pasted into a model field, never reaches a
// label.
func Label(s string) string {
	if s == "" {
		return "unknown"
	}
	if len(s) > 64 || strings.HasPrefix(s, "sk-") {
		return "other"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '-', c == ':', c == '/', c == '@', c == '+':
		default:
			return "other"
		}
	}
	return s
}
