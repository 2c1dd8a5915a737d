package ratelimit

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// Budget is one fleet-wide budget of a model. In YAML (llmq's config file)
// budgets are keyed by model, with "default" for every model without its
// own entry:
//
//	budgets:
//	  default:     {rpm: 500, tpm: 200000}
//	  gpt-4o-mini: {rpm: 5000, tpm: 4000000, burst: 400000}
//
// burst is a whole number of tokens (the token bucket's capacity);
// burst_requests is the request bucket's capacity.
type Budget struct {
	// RPM is the requests-per-minute limit; 0 means unlimited.
	RPM int64 `yaml:"rpm" json:"rpm"`
	// TPM is the tokens-per-minute limit; 0 means unlimited.
	TPM int64 `yaml:"tpm" json:"tpm"`
	// BurstRequests is the request bucket's capacity: how many requests may
	// go at once after an idle spell. 0 means the default burst:
	// Config.BurstWindow of RPM (at least one request), grown to what the
	// provider's x-ratelimit-remaining-requests readings prove its bucket
	// holds, never above a minute's budget.
	BurstRequests int64 `yaml:"burst_requests" json:"burst_requests"`
	// BurstTokens is the token bucket's capacity, and so the largest cost a
	// single request may have. 0 means the default burst, as for
	// BurstRequests; a default burst serves a cost above it (up to a
	// minute's budget) by waiting for a full bucket and leaving it in debt.
	BurstTokens int64 `yaml:"burst" json:"burst"`
}

// RequestCapacity returns the request bucket's largest capacity: the burst,
// or a minute's budget for a default burst (0 = unlimited).
func (b Budget) RequestCapacity() int64 { return capacity(b.RPM, b.BurstRequests) }

// TokenCapacity returns the token bucket's largest capacity, as
// RequestCapacity (0 = unlimited).
func (b Budget) TokenCapacity() int64 { return capacity(b.TPM, b.BurstTokens) }

// units returns the buckets' capacities in stored units (see unit), less
// the transit headroom of Config.Transit: rate × transit, at most half the
// token bucket and always leaving room for one request. 0 means unlimited.
func (b Budget) units(transit time.Duration) (req, tok int64) {
	ms := transit.Milliseconds()
	if req = b.RequestCapacity() * unit; req > 0 {
		req -= min(b.RPM*ms, req-unit)
	}
	if tok = b.TokenCapacity() * unit; tok > 0 {
		tok -= min(b.TPM*ms, tok/2)
	}
	return req, tok
}

func capacity(limit, burst int64) int64 {
	if limit == 0 {
		return 0
	}
	if burst == 0 {
		return limit
	}
	return burst
}

// DefaultModel is the Budgets key that applies to models without an entry.
const DefaultModel = "default"

// Defaults of Config's zero values.
const (
	DefaultPrefix  = "llmq"
	DefaultAccount = "default"
	DefaultMaxWait = 5 * time.Second
	// DefaultBurstWindow is the default burst in time of budget: one
	// second, since providers may enforce a per-minute limit per second
	// (OpenAI: "60,000 requests/minute may be enforced as 1,000
	// requests/second").
	DefaultBurstWindow = time.Second
)

// Calibration bounds: the factor by which the provider's tokens exceed the
// fleet's estimates is learned from consecutive x-ratelimit-remaining-tokens
// readings, from evidence that halves in weight every CalibrationHalfLife,
// within [FactorMin, FactorMax], once calibrationMinPairs pairs of readings
// (decayed) support it; a factor within FactorDeadBand of 1 is 1, and of a
// correction below 1 (the fleet spending more than it estimates, where an
// error costs 429s) only FactorDownTrust is taken.
const (
	FactorMin           = 0.5
	FactorMax           = 2.0
	FactorDeadBand      = 0.05
	FactorDownTrust     = 0.75
	CalibrationHalfLife = 20 * time.Second
	calibrationMinPairs = 8
)

// ClaimGrace is how long a fairness claim outlives the instant its owner was
// told to come back before other callers may ignore it.
const ClaimGrace = 2 * time.Second

// unit is the number of stored units per token or request: with it, a
// per-minute limit L refills exactly L units per millisecond.
const unit = 60_000

// maxCapacity keeps capacity × unit an exact integer in Lua's doubles.
const maxCapacity = (1 << 53) / unit

// Config configures a Limiter. Zero values take the documented defaults.
// Every process of a fleet must use the same Prefix, Account and Budgets.
type Config struct {
	// Prefix namespaces the Redis keys (default "llmq").
	Prefix string
	// Account names the API account whose budgets these are (default
	// "default"); two accounts' budgets are independent.
	Account string
	// Budgets are keyed by model; DefaultModel ("default") applies to models
	// without an entry. A model with neither gets a *NoBudgetError; a zero
	// Budget under DefaultModel runs every other model unlimited.
	Budgets map[string]Budget
	// MaxWait is the longest Acquire blocks; a longer wait returns a
	// *WaitError (default 5 s).
	MaxWait time.Duration
	// RefundUnused makes Reconcile give back tokens reserved but not used
	// (max_tokens beyond the actual completion). Default false, matching
	// OpenAI, which charges max_tokens against TPM when the request arrives
	// and refunds nothing within the minute; set it for providers that
	// count actual usage.
	RefundUnused bool
	// Transit is how much later than the quickest call a call may reach
	// the provider after its reservation (connection set-up, scheduling,
	// network jitter). A provider's bucket stops filling while it is full,
	// and calls still in transit are not in it yet: calls overtaking each
	// other in transit can then find it emptier than this budget says. Each
	// bucket keeps rate × Transit of its capacity back (at most half the
	// token bucket, always room for one request), which covers transit
	// spreads up to Transit. 0 keeps nothing back; llmq's config sets
	// 100 ms (budget_transit).
	Transit time.Duration
	// BurstWindow is the default burst as time of budget, for budgets that
	// set no burst (default DefaultBurstWindow, 1 s).
	BurstWindow time.Duration
	// OnProviderLimit, when set, is called once per model, kind and value
	// when the provider's x-ratelimit-limit-* is below the configured
	// limit; the budget then uses the provider's.
	OnProviderLimit func(ProviderLimit)
	// Now is the clock (default time.Now). Tests inject one.
	Now func() time.Time
}

// validate checks c and returns it with defaults applied. Errors name the
// offending field.
func (c Config) validate() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Account == "" {
		c.Account = DefaultAccount
	}
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.BurstWindow == 0 {
		c.BurstWindow = DefaultBurstWindow
	}
	var errs []error
	if c.BurstWindow < time.Millisecond || c.BurstWindow > time.Minute {
		errs = append(errs, fmt.Errorf("ratelimit: burst window is %s: set a duration from 1ms to 1m, or 0 for %s", c.BurstWindow, DefaultBurstWindow))
	}
	if c.Transit < 0 || c.Transit > time.Minute {
		errs = append(errs, fmt.Errorf("ratelimit: transit is %s: set a duration from 0 to 1m, typically 100ms", c.Transit))
	}
	if c.MaxWait < 0 {
		errs = append(errs, fmt.Errorf("ratelimit: max_wait is %s: set a positive duration or 0 for the default %s", c.MaxWait, DefaultMaxWait))
	}
	models := make([]string, 0, len(c.Budgets))
	for m := range c.Budgets {
		models = append(models, m)
	}
	sort.Strings(models)
	budgets := make(map[string]Budget, len(c.Budgets))
	for _, m := range models {
		b := c.Budgets[m]
		if m == "" {
			errs = append(errs, errors.New(`ratelimit: budgets has an empty model name: name the model or use "default"`))
			continue
		}
		errs = append(errs, b.check(fmt.Sprintf("budgets[%q]", m))...)
		budgets[m] = b
	}
	c.Budgets = budgets
	return c, errors.Join(errs...)
}

// check returns one error per invalid field of b, each naming the field.
func (b Budget) check(path string) []error {
	var errs []error
	for _, f := range []struct {
		name         string
		limit, burst int64
		limitName    string
	}{
		{"burst_requests", b.RPM, b.BurstRequests, "rpm"},
		{"burst", b.TPM, b.BurstTokens, "tpm"},
	} {
		switch {
		case f.limit < 0:
			errs = append(errs, fmt.Errorf("ratelimit: %s.%s is %d: set it to a positive limit, or 0 for unlimited", path, f.limitName, f.limit))
		case f.burst < 0:
			errs = append(errs, fmt.Errorf("ratelimit: %s.%s is %d: set it to a positive count, or 0 for the default burst", path, f.name, f.burst))
		case f.limit == 0 && f.burst != 0:
			errs = append(errs, fmt.Errorf("ratelimit: %s.%s is %d but %s is 0 (unlimited): set %s or remove %s", path, f.name, f.burst, f.limitName, f.limitName, f.name))
		case f.limit > maxCapacity || f.burst > maxCapacity:
			errs = append(errs, fmt.Errorf("ratelimit: %s.%s/%s exceeds %d: use a smaller number", path, f.limitName, f.name, int64(maxCapacity)))
		}
	}
	return errs
}
