// Package config holds llmq's settings: the defaults from DESIGN.md, a YAML
// file (LLMQ_CONFIG), and environment overrides, in that order of precedence
// (flags, applied by cmd/llmq, override all three). Print renders the
// effective configuration with secrets masked: the living checklist.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/cache"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/policy"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/ratelimit"
	"github.com/llmq/llmq/redisconn"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

// Config is the whole of llmq's configuration.
type Config struct {
	// RedisURL locates Redis, e.g. redis://127.0.0.1:6379/0 (env
	// LLMQ_REDIS_URL); redis+sentinel:// and redis+cluster:// URLs select
	// Sentinel and Cluster (see package redisconn).
	RedisURL string `yaml:"redis_url"`
	// Prefix namespaces llmq's own Redis keys (results, budgets, holds).
	Prefix string `yaml:"prefix"`
	// Queue is the asynq queue jobs are enqueued to by default.
	Queue    string   `yaml:"queue"`
	Upstream Upstream `yaml:"upstream"`
	Worker   Worker   `yaml:"worker"`
	Retry    Retry    `yaml:"retry"`
	// Budgets are the fleet-wide budgets keyed by model; "default" applies
	// to models without their own entry.
	Budgets  map[string]Budget `yaml:"budgets"`
	Breaker  Breaker           `yaml:"breaker"`
	Results  Results           `yaml:"results"`
	Estimate Estimate          `yaml:"estimate"`
	Log      Log               `yaml:"log"`

	// BudgetMaxWait is the longest a job blocks in the worker for its
	// budget; a longer wait snoozes the job (no attempt burned) until the
	// budget has room.
	BudgetMaxWait time.Duration `yaml:"budget_max_wait"`
	// BudgetRefundUnused gives back, after each call, tokens reserved but
	// not used (max_tokens beyond the actual completion). Off by default,
	// matching OpenAI, which charges max_tokens when the request arrives;
	// turn it on for providers that count actual usage.
	BudgetRefundUnused bool `yaml:"budget_refund_unused"`
	// BudgetTransit is the spread of the time calls take from their
	// reservation to the provider; each budget keeps rate × it back so
	// calls overtaking each other never meet a 429 (ratelimit.Config.Transit).
	BudgetTransit time.Duration `yaml:"budget_transit"`

	// Fallbacks maps a model to the models tried, in order, when it cannot
	// serve a job (model not found, permission, context length, overload,
	// breaker open) and the job names no fallback of its own, e.g.
	// {gpt-4o: [gpt-4o-mini]}.
	Fallbacks map[string][]string `yaml:"fallbacks"`
	// Cache configures the response cache, the tier after the models for
	// jobs that set allow_cached.
	Cache Cache `yaml:"cache"`
	// StaticResponse configures the static text, the last tier.
	StaticResponse StaticResponse `yaml:"static_response"`
	// Serve configures `llmq serve`, the OpenAI-compatible Batch API.
	Serve Serve `yaml:"serve"`
}

// DefaultServeAddr is where `llmq serve` listens by default.
const DefaultServeAddr = "127.0.0.1:8080"

// Serve configures the Batch API server (batchapi); the defaults are
// batchapi's (OpenAI's limits).
type Serve struct {
	// Addr is where `llmq serve` listens (env LLMQ_SERVE_ADDR).
	Addr string `yaml:"addr"`
	// Clients are the API's tenants: a name and a file holding the key. Keys
	// may also come from the environment (LLMQ_SERVE_KEYS=name:key,...).
	Clients []ServeClient `yaml:"clients"`
	// MaxFileBytes caps one uploaded file (0: batchapi.DefaultMaxFileBytes).
	MaxFileBytes int64 `yaml:"max_file_bytes"`
	// MaxRequests caps the requests of one batch (0: batchapi.DefaultMaxRequests).
	MaxRequests int `yaml:"max_requests"`
	// CompletionWindow is how long a batch created with completion_window
	// "24h" has before what remains expires (0: 24h).
	CompletionWindow time.Duration `yaml:"completion_window"`
	// FileTTL is how long files (inputs and outputs) are kept (0: 30 days,
	// OpenAI's default for batch files).
	FileTTL time.Duration `yaml:"file_ttl"`
	// Tick is how often each server advances the batches in progress
	// (0: batchapi.DefaultTick).
	Tick time.Duration `yaml:"tick"`
}

// ServeClient is one tenant of the Batch API.
type ServeClient struct {
	Name    string `yaml:"name"`
	KeyFile string `yaml:"key_file"`
}

// Upstream configures the OpenAI-compatible API.
type Upstream struct {
	// BaseURL is the API root; the client appends /chat/completions
	// (env OPENAI_BASE_URL).
	BaseURL string `yaml:"base_url"`
	// APIKey is the key (env OPENAI_API_KEY). Never printed.
	APIKey string `yaml:"-"`
	// APIKeyFile, when set, is read for the key and re-read when it changes
	// (env LLMQ_API_KEY_FILE). It wins over APIKey.
	APIKeyFile string `yaml:"api_key_file"`
	// Account names the API account whose budget and hold state the fleet
	// shares.
	Account               string        `yaml:"account"`
	ConnectTimeout        time.Duration `yaml:"connect_timeout"`
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// FirstByteTimeout bounds, for a streamed call, the wait for the
	// headers.
	FirstByteTimeout time.Duration `yaml:"first_byte_timeout"`
	// FirstEventTimeout bounds, for a streamed call, the wait from the
	// headers to the first event: how long a model may think before it
	// writes.
	FirstEventTimeout time.Duration `yaml:"first_event_timeout"`
	// IdleTimeout bounds the silence between two events of a stream.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// Stream makes upstream calls stream and assembles the answer (default
	// true); false for a provider without streaming.
	Stream bool `yaml:"stream"`
	// NoStreamModels lists models called without streaming.
	NoStreamModels []string `yaml:"no_stream_models,omitempty"`
	// CallTimeout bounds one upstream call, body included.
	CallTimeout time.Duration `yaml:"call_timeout"`
	// AzureAPIVersion, when set, switches to Azure OpenAI: deployment URLs
	// and the api-key header.
	AzureAPIVersion string `yaml:"azure_api_version"`
}

// Worker configures a worker process.
type Worker struct {
	Concurrency int `yaml:"concurrency"`
	// Queues maps queue names to priorities.
	Queues          map[string]int `yaml:"queues"`
	ShutdownTimeout time.Duration  `yaml:"shutdown_timeout"`
	// PollInterval is how often scheduled and retry tasks are moved to
	// pending (asynq's DelayedTaskCheckInterval).
	PollInterval time.Duration `yaml:"poll_interval"`
	// HoldRecheck is how long jobs wait before looking again while the
	// fleet is on hold (bad key, quota).
	HoldRecheck time.Duration `yaml:"hold_recheck"`
	// MetricsAddr is where the worker serves /metrics and /healthz (env
	// LLMQ_METRICS_ADDR, flag --metrics-addr): ":0" picks a free port,
	// "off" disables.
	MetricsAddr string `yaml:"metrics_addr"`
	// Pprof serves Go's profiles (net/http/pprof) under /debug/pprof/ on
	// the metrics server, for profiling a worker under load (make
	// bench-overhead -profile). Off by default: profiles reveal memory.
	Pprof bool `yaml:"pprof"`
}

// Retry is the backoff policy.
type Retry struct {
	Attempts      int           `yaml:"attempts"`
	Base          time.Duration `yaml:"base"`
	Cap           time.Duration `yaml:"cap"`
	RetryAfterCap time.Duration `yaml:"retry_after_cap"`
}

// Budget is one fleet-wide budget: requests and tokens per minute (0 =
// unlimited), the token burst and the request burst (bucket capacities; 0 =
// one minute's budget).
type Budget struct {
	RPM           int64 `yaml:"rpm"`
	TPM           int64 `yaml:"tpm"`
	Burst         int64 `yaml:"burst"`
	BurstRequests int64 `yaml:"burst_requests"`
}

// Breaker configures the per-model circuit breaker, shared by the fleet in
// Redis (breaker.Config): Failures failures in a row, or FailureRate
// percent of at least MinCalls calls in the rolling Window, open it for
// Open, then one probe closes or reopens it.
type Breaker struct {
	Failures int `yaml:"failures"`
	// FailureRate is a percentage (1-100).
	FailureRate int           `yaml:"failure_rate"`
	MinCalls    int           `yaml:"min_calls"`
	Window      time.Duration `yaml:"window"`
	Open        time.Duration `yaml:"open"`
	// PerProcess gives each worker process a breaker of its own instead of
	// the fleet's shared one. Only for the outage drill's baseline
	// (make bench-outage); never in production.
	PerProcess bool `yaml:"per_process"`
}

// Cache configures the response cache.
type Cache struct {
	// TTL is how long the response of a job that set allow_cached stays
	// cached, to serve a later identical request when no model can.
	TTL time.Duration `yaml:"ttl"`
}

// StaticResponse configures the static tier: text served as a
// chat.completion when no model tier and no cached response can serve a
// job.
type StaticResponse struct {
	// Text is the assistant message; "" disables the tier.
	Text string `yaml:"text"`
	// AllJobs serves it to every job, not only to jobs that set
	// allow_static.
	AllJobs bool `yaml:"all_jobs"`
}

// Results configures the result store.
type Results struct {
	// TTL is how long result records are kept in Redis.
	TTL time.Duration `yaml:"ttl"`
	// Retention is how long asynq keeps completed tasks (asynqmon shows
	// their results meanwhile).
	Retention time.Duration `yaml:"retention"`
}

// Estimate configures the token estimate.
type Estimate struct {
	// DefaultMaxTokens is charged per choice for jobs that set no
	// max_tokens / max_completion_tokens.
	DefaultMaxTokens int `yaml:"default_max_tokens"`
	// Method is how a job's prompt is charged to the budget: "chars" (the
	// default, like OpenAI's rate limiter) or "tokenizer" (see
	// jobs.MethodChars and jobs.MethodTokenizer).
	Method string `yaml:"method"`
}

// Log configures logging.
type Log struct {
	Level       string `yaml:"level"`
	Environment string `yaml:"environment"`
}

// Defaults that belong to the configuration itself; the others are the
// named defaults of the packages that own them.
const (
	// DefaultRedisURL is where Redis is looked for.
	DefaultRedisURL = "redis://127.0.0.1:6379/0"
	// DefaultPrefix namespaces llmq's own Redis keys.
	DefaultPrefix = ratelimit.DefaultPrefix
	// DefaultQueue is the asynq queue jobs go to and workers drain.
	DefaultQueue = worker.DefaultQueue
	// DefaultBudget is the Budgets key for models without their own entry.
	DefaultBudget = ratelimit.DefaultModel
	// DefaultConcurrency is how many jobs a worker process runs at once.
	DefaultConcurrency = worker.DefaultConcurrency
	// DefaultShutdownTimeout is how long a stopping worker waits for jobs
	// in flight.
	DefaultShutdownTimeout = worker.DefaultShutdownTimeout
	// DefaultPollInterval is asynq's delayed-task check.
	DefaultPollInterval = worker.DefaultPollInterval
	// DefaultHoldRecheck is how long held jobs wait before looking again.
	DefaultHoldRecheck = worker.DefaultHoldRecheck
	// DefaultCallTimeout bounds one upstream call, body included.
	DefaultCallTimeout = worker.DefaultCallTimeout
	// DefaultMetricsAddr is where a worker serves /metrics and /healthz.
	DefaultMetricsAddr = ":9464"
	// DefaultResultTTL is how long result records are kept.
	DefaultResultTTL = worker.DefaultResultTTL
	// DefaultRetention is how long asynq keeps completed tasks.
	DefaultRetention = 24 * time.Hour
	// DefaultMaxTokens is charged per choice for jobs without max_tokens.
	DefaultMaxTokens = worker.DefaultMaxTokens
	// DefaultBudgetTransit is the budget's headroom for calls in flight.
	DefaultBudgetTransit = 100 * time.Millisecond
	// MaxBudgetMaxWait bounds budget_max_wait: a job's asynq task timeout
	// leaves each model tier producer.TierMargin beside its call, for the
	// budget wait among other things (see producer.TaskTimeout), so a
	// longer blocking wait could get a call cut short by asynq. Longer
	// waits snooze the job instead, which costs no attempt.
	MaxBudgetMaxWait = producer.TierMargin / 2
	// DefaultLogLevel and DefaultEnvironment label the logs.
	DefaultLogLevel    = "info"
	DefaultEnvironment = "dev"
)

// Default returns the defaults of DESIGN.md, from the named defaults of the
// packages that own them.
func Default() Config {
	return Config{
		RedisURL: DefaultRedisURL,
		Prefix:   DefaultPrefix,
		Queue:    DefaultQueue,
		Upstream: Upstream{
			BaseURL:               upstream.DefaultBaseURL,
			Account:               ratelimit.DefaultAccount,
			ConnectTimeout:        upstream.DefaultConnectTimeout,
			ResponseHeaderTimeout: upstream.DefaultResponseHeaderTimeout,
			FirstByteTimeout:      upstream.DefaultFirstByteTimeout,
			FirstEventTimeout:     upstream.DefaultFirstEventTimeout,
			IdleTimeout:           upstream.DefaultIdleTimeout,
			Stream:                true,
			CallTimeout:           DefaultCallTimeout,
		},
		Worker: Worker{
			Concurrency:     DefaultConcurrency,
			Queues:          map[string]int{DefaultQueue: 1},
			ShutdownTimeout: DefaultShutdownTimeout,
			PollInterval:    DefaultPollInterval,
			HoldRecheck:     DefaultHoldRecheck,
			MetricsAddr:     DefaultMetricsAddr,
		},
		Retry: Retry{Attempts: policy.DefaultAttempts, Base: policy.DefaultBase, Cap: policy.DefaultCap,
			RetryAfterCap: policy.DefaultRetryAfterCap},
		Budgets: map[string]Budget{DefaultBudget: {}},
		Breaker: Breaker{Failures: breaker.DefaultFailures, FailureRate: breaker.DefaultFailureRate, MinCalls: breaker.DefaultMinCalls,
			Window: breaker.DefaultWindow, Open: breaker.DefaultOpen},
		Results:       Results{TTL: DefaultResultTTL, Retention: DefaultRetention},
		Estimate:      Estimate{DefaultMaxTokens: DefaultMaxTokens, Method: string(jobs.DefaultMethod)},
		Log:           Log{Level: DefaultLogLevel, Environment: DefaultEnvironment},
		BudgetMaxWait: ratelimit.DefaultMaxWait,
		BudgetTransit: DefaultBudgetTransit,
		Cache:         Cache{TTL: cache.DefaultTTL},
		Serve: Serve{Addr: DefaultServeAddr, MaxFileBytes: batchapi.DefaultMaxFileBytes, MaxRequests: batchapi.DefaultMaxRequests,
			CompletionWindow: batchapi.DefaultCompletionWindow, FileTTL: batchapi.DefaultFileTTL, Tick: batchapi.DefaultTick},
	}
}

// Load returns the defaults, overridden by the YAML file at LLMQ_CONFIG (if
// set), overridden by the environment. getenv is os.Getenv in production.
func Load(getenv func(string) string) (Config, error) {
	c := Default()
	if path := getenv("LLMQ_CONFIG"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			return c, fmt.Errorf("config: open LLMQ_CONFIG file: %w", err)
		}
		defer f.Close()
		if err := c.decodeYAML(f); err != nil {
			return c, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	if err := c.applyEnv(getenv); err != nil {
		return c, err
	}
	if _, ok := c.Budgets[DefaultBudget]; !ok {
		// Models without a budget of their own are unlimited unless the
		// file sets a default one; say so in the effective configuration.
		if c.Budgets == nil {
			c.Budgets = map[string]Budget{}
		}
		c.Budgets[DefaultBudget] = Budget{}
	}
	return c, c.Validate()
}

// decodeYAML overlays the YAML document in r on c. A map or list the
// document sets replaces c's (the default) whole: yaml.v3 would merge a
// map into the one already there, so `worker.queues: {demo: 1}` would
// serve the default queue too.
func (c *Config) decodeYAML(r io.Reader) error {
	src, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil // an empty file
	}
	clearCollections(doc.Content[0], reflect.ValueOf(c).Elem())
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// clearCollections zeroes every map and slice field of the struct v that
// the YAML mapping node sets, recursing into nested structs, so decoding
// replaces them instead of merging into them.
func clearCollections(node *yaml.Node, v reflect.Value) {
	if node.Kind != yaml.MappingNode || v.Kind() != reflect.Struct {
		return
	}
	fields := make(map[string]reflect.Value, v.NumField())
	for i := range v.NumField() {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = v.Field(i)
		}
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		f, ok := fields[node.Content[i].Value]
		if !ok {
			continue // KnownFields reports it
		}
		switch f.Kind() {
		case reflect.Map, reflect.Slice:
			f.Set(reflect.Zero(f.Type()))
		case reflect.Struct:
			clearCollections(node.Content[i+1], f)
		}
	}
}

func (c *Config) applyEnv(getenv func(string) string) error {
	set := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set("LLMQ_REDIS_URL", &c.RedisURL)
	set("OPENAI_BASE_URL", &c.Upstream.BaseURL)
	set("OPENAI_API_KEY", &c.Upstream.APIKey)
	set("LLMQ_API_KEY_FILE", &c.Upstream.APIKeyFile)
	set("LLMQ_METRICS_ADDR", &c.Worker.MetricsAddr)
	set("LLMQ_SERVE_ADDR", &c.Serve.Addr)
	set("LOG_LEVEL", &c.Log.Level)
	set("LLMQ_ENV", &c.Log.Environment)
	for _, e := range []struct {
		name string
		dst  func(*Budget) *int64
	}{{"LLMQ_RPM", func(b *Budget) *int64 { return &b.RPM }}, {"LLMQ_TPM", func(b *Budget) *int64 { return &b.TPM }}} {
		v := getenv(e.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("config: %s=%q: must be a whole number ≥ 0 (0 = unlimited)", e.name, v)
		}
		if c.Budgets == nil {
			c.Budgets = map[string]Budget{}
		}
		b := c.Budgets[DefaultBudget]
		*e.dst(&b) = n
		c.Budgets[DefaultBudget] = b
	}
	return nil
}

// Validate reports the first setting that cannot work, naming its field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if _, err := redisconn.Parse(c.RedisURL); err != nil {
		errs = append(errs, fmt.Errorf("config: redis_url: %w", err))
	}
	if u, err := url.Parse(c.Upstream.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("upstream.base_url", "must be an http(s) URL such as %s, got %q", upstream.DefaultBaseURL, RedactURL(c.Upstream.BaseURL))
	}
	if c.Prefix == "" {
		bad("prefix", "must not be empty")
	}
	if c.Queue == "" {
		bad("queue", "must not be empty")
	}
	if c.Worker.Concurrency < 1 {
		bad("worker.concurrency", "must be at least 1, got %d", c.Worker.Concurrency)
	}
	if len(c.Worker.Queues) == 0 {
		bad("worker.queues", "must name at least one queue")
	}
	for q, p := range c.Worker.Queues {
		if p < 1 {
			bad("worker.queues."+q, "priority must be at least 1, got %d", p)
		}
	}
	if c.Retry.Attempts < 1 {
		bad("retry.attempts", "must be at least 1, got %d", c.Retry.Attempts)
	}
	for field, d := range map[string]time.Duration{
		"upstream.connect_timeout": c.Upstream.ConnectTimeout, "upstream.response_header_timeout": c.Upstream.ResponseHeaderTimeout,
		"upstream.first_byte_timeout": c.Upstream.FirstByteTimeout, "upstream.idle_timeout": c.Upstream.IdleTimeout,
		"upstream.first_event_timeout": c.Upstream.FirstEventTimeout,
		"upstream.call_timeout":        c.Upstream.CallTimeout, "retry.base": c.Retry.Base, "retry.cap": c.Retry.Cap,
		"retry.retry_after_cap": c.Retry.RetryAfterCap, "worker.shutdown_timeout": c.Worker.ShutdownTimeout,
		"worker.poll_interval": c.Worker.PollInterval, "worker.hold_recheck": c.Worker.HoldRecheck,
		"breaker.window": c.Breaker.Window, "breaker.open": c.Breaker.Open, "results.ttl": c.Results.TTL,
		"results.retention": c.Results.Retention, "budget_max_wait": c.BudgetMaxWait,
	} {
		if d <= 0 {
			bad(field, "must be a positive duration such as 5s, got %v", d)
		}
	}
	if c.BudgetMaxWait > MaxBudgetMaxWait {
		bad("budget_max_wait", "must be at most %v, got %v: a job's task timeout leaves each model tier %v beside its call (budget wait included), and asynq cancels a run that outlasts it", MaxBudgetMaxWait, c.BudgetMaxWait, producer.TierMargin)
	}
	if c.Retry.Cap < c.Retry.Base {
		bad("retry.cap", "must be at least retry.base (%v), got %v", c.Retry.Base, c.Retry.Cap)
	}
	if c.Breaker.Failures < 1 {
		bad("breaker.failures", "must be at least 1, got %d", c.Breaker.Failures)
	}
	if c.Breaker.FailureRate < 1 || c.Breaker.FailureRate > 100 {
		bad("breaker.failure_rate", "must be a percentage from 1 to 100, got %d", c.Breaker.FailureRate)
	}
	if c.Breaker.MinCalls < 1 {
		bad("breaker.min_calls", "must be at least 1, got %d", c.Breaker.MinCalls)
	}
	if c.Cache.TTL <= 0 {
		bad("cache.ttl", "must be a positive duration such as 24h, got %v", c.Cache.TTL)
	}
	for m, tiers := range c.Fallbacks {
		if len(tiers) > jobs.MaxFallbacks {
			// Each tier can be one paid call, and the task timeout grows
			// with the longest list: the same bound as a job's own list.
			bad("fallbacks."+m, "must list at most %d models, got %d", jobs.MaxFallbacks, len(tiers))
		}
		for i, t := range tiers {
			if t == "" || t == m {
				bad(fmt.Sprintf("fallbacks.%s[%d]", m, i), "must name another model, got %q", t)
			}
		}
	}
	for m, b := range c.Budgets {
		if b.RPM < 0 || b.TPM < 0 || b.Burst < 0 || b.BurstRequests < 0 {
			bad("budgets."+m, "rpm, tpm, burst and burst_requests must be ≥ 0 (0 = unlimited / one minute's budget)")
		}
	}
	if c.BudgetTransit < 0 || c.BudgetTransit > time.Minute {
		bad("budget_transit", "must be from 0 to 1m, typically 100ms, got %v", c.BudgetTransit)
	}
	if c.Serve.MaxFileBytes < 0 || c.Serve.MaxRequests < 0 || c.Serve.CompletionWindow < 0 || c.Serve.FileTTL < 0 || c.Serve.Tick < 0 {
		bad("serve", "max_file_bytes, max_requests, completion_window, file_ttl and tick must be ≥ 0 (0 = default)")
	}
	if _, err := jobs.ParseMethod(c.Estimate.Method); err != nil {
		bad("estimate.method", "must be %q or %q, got %q", jobs.MethodChars, jobs.MethodTokenizer, c.Estimate.Method)
	}
	if c.Estimate.DefaultMaxTokens < 1 {
		bad("estimate.default_max_tokens", "must be at least 1, got %d", c.Estimate.DefaultMaxTokens)
	}
	return errors.Join(errs...)
}

// FallbackTiers returns the most fallback models Fallbacks gives one
// model: a job without a fallback list of its own walks at most this many
// model tiers after its primary.
func (c *Config) FallbackTiers() int {
	n := 0
	for m, list := range c.Fallbacks {
		seen := map[string]bool{m: true}
		for _, t := range list {
			seen[t] = true
		}
		n = max(n, len(seen)-1)
	}
	return n
}

// TaskTimeout returns the asynq task timeout llmq's producers (llmq
// enqueue, llmq serve) give a job without a fallback list of its own:
// room for a whole upstream.call_timeout on every tier it may walk
// (producer.TaskTimeout).
func (c *Config) TaskTimeout() time.Duration {
	return producer.TaskTimeout(c.Upstream.CallTimeout, 1+c.FallbackTiers())
}

// ProducerOptions returns the producer options that carry the
// configuration: queue, prefix, attempts, retention, result TTL, and the
// call timeout and fallback tiers each job's task timeout is derived from.
func (c *Config) ProducerOptions() []producer.Option {
	return []producer.Option{producer.WithQueue(c.Queue), producer.WithPrefix(c.Prefix),
		producer.WithAttempts(c.Retry.Attempts), producer.WithRetention(c.Results.Retention),
		producer.WithResultTTL(c.Results.TTL), producer.WithCallTimeout(c.Upstream.CallTimeout),
		producer.WithFallbackTiers(c.FallbackTiers())}
}

// Print writes the effective configuration as YAML, with the API key
// masked, and where the key comes from; URLs show no password. A comment
// line shows the Redis mode and nodes.
func (c Config) Print(w io.Writer) error {
	redisLine := "(the URL cannot be read)"
	if conn, err := redisconn.Parse(c.RedisURL); err == nil {
		c.RedisURL, redisLine = conn.Redacted(), conn.String()
	} else {
		c.RedisURL = RedactURL(c.RedisURL)
	}
	c.Upstream.BaseURL = RedactURL(c.Upstream.BaseURL)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return fmt.Errorf("config: render: %w", err)
	}
	key := "(none: set OPENAI_API_KEY or LLMQ_API_KEY_FILE)"
	switch {
	case c.Upstream.APIKeyFile != "":
		key = "from file " + c.Upstream.APIKeyFile
	case c.Upstream.APIKey != "":
		key = "from OPENAI_API_KEY: " + Mask(c.Upstream.APIKey)
	}
	fmt.Fprintf(&buf, "# redis: %s\n", redisLine)
	fmt.Fprintf(&buf, "# task timeout: %v per job (upstream.call_timeout × %d model tiers + margins; a job's own fallback list counts instead)\n",
		c.TaskTimeout(), 1+c.FallbackTiers())
	fmt.Fprintf(&buf, "# api key: %s\n", key)
	_, err := w.Write(buf.Bytes())
	return err
}

// redacted replaces a password in a URL.
const redacted = "xxxxx"

// RedactURL returns u with any password replaced by "xxxxx": the user
// info's password and query parameters such as password= or
// sentinel_password=. Text that does not parse as a URL keeps nothing
// between "://" and the last "@".
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		scheme, rest, ok := strings.Cut(u, "://")
		if at := strings.LastIndex(rest, "@"); ok && at >= 0 {
			return scheme + "://" + redacted + rest[at:]
		}
		return u
	}
	if p.User != nil {
		if _, has := p.User.Password(); has {
			p.User = url.UserPassword(p.User.Username(), redacted)
		}
	}
	if p.RawQuery != "" {
		q := p.Query()
		for k := range q {
			if strings.Contains(strings.ToLower(k), "password") {
				q.Set(k, redacted)
			}
		}
		p.RawQuery = q.Encode()
	}
	return p.String()
}

// Mask describes a secret without revealing any of it.
func Mask(secret string) string {
	if secret == "" {
		return "(empty)"
	}
	return fmt.Sprintf("set (%d characters, hidden)", len(secret))
}
