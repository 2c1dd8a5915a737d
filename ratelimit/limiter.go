package ratelimit

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

//go:embed budget.lua
var budgetLua string

// ErrTooLarge is returned (wrapped with the model, cost and capacity) when a
// single cost exceeds a bucket's capacity: it could never be served, so it
// is refused at once instead of waiting forever. Dead-letter the job, or
// lower its max_tokens, or raise the budget's burst.
var ErrTooLarge = errors.New("ratelimit: cost exceeds the budget's capacity")

// ErrNoBudget is matched (errors.Is) by the error for a model that has no
// budget of its own while no "default" budget is configured: a
// *NoBudgetError from Reserve, Acquire and Usage.
var ErrNoBudget = errors.New("ratelimit: no budget for model")

// NoBudgetError says that Model has no budget: no entry of its own in
// Config.Budgets, and no DefaultModel entry. It matches ErrNoBudget.
type NoBudgetError struct {
	// Model is the model asked for.
	Model string
}

// Error implements error.
func (e *NoBudgetError) Error() string {
	return fmt.Sprintf("%v %q and no %q budget", ErrNoBudget, e.Model, DefaultModel)
}

// Is reports that a NoBudgetError is an ErrNoBudget.
func (e *NoBudgetError) Is(target error) bool { return target == ErrNoBudget }

// Backoff bounds of Acquire's retries while Redis fails.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = time.Second
)

// Cost is what one call is charged against a budget.
type Cost struct {
	// Requests is usually 1.
	Requests int64
	// Tokens is the prompt estimate plus max_tokens × n, as the provider
	// counts it when the request arrives.
	Tokens int64
}

// Reservation is the answer to Reserve or Acquire.
type Reservation struct {
	// OK reports that Cost was taken from the budget.
	OK bool
	// Wait, when OK is false, is how long until the cost would fit (exact to
	// the millisecond, given no other caller takes first). It includes any
	// fleet cooldown.
	Wait time.Duration
	// Model is the model whose budget was asked.
	Model string
	// Cost is what was asked for.
	Cost Cost
	// At is the instant (from Config.Now) the budget was evaluated.
	At time.Time
	// Charged is the tokens taken from the budget when OK: Cost.Tokens
	// times the budget's calibration factor, rounded up.
	Charged int64

	// The budget's running sums right after this reservation (units), so
	// Reconcile can place the provider's reading among the fleet's charges.
	sumReq, sumTok, sumEst int64
	// refused: the provider answered without charging the call.
	refused bool
}

// Refused returns r marked as a call the provider did not charge (a 429, an
// error answer, no answer): Reconcile then adopts the answer's headers but
// learns nothing from r's estimate.
func (r Reservation) Refused() Reservation {
	r.refused = true
	return r
}

// WaitError is returned by Acquire when the wait for the budget is longer
// than it may block (Config.MaxWait, or the context's deadline). The job
// should be rescheduled for Until without counting as a failed attempt.
type WaitError struct {
	// Model is the model whose budget was asked.
	Model string
	// Cost is what was asked for.
	Cost Cost
	// Wait is how long the budget asked to wait.
	Wait time.Duration
	// Until is when the cost is expected to fit.
	Until time.Time
}

// Error implements error.
func (e *WaitError) Error() string {
	return fmt.Sprintf("ratelimit: budget of model %q has no room for %d requests and %d tokens for %s (until %s), longer than the caller may block: reschedule the job for then",
		e.Model, e.Cost.Requests, e.Cost.Tokens, e.Wait, e.Until.Format(time.RFC3339Nano))
}

// ServerView is the provider's own view of the budget, from the
// x-ratelimit-* headers of a response. -1 means unknown; use NoServerView
// when there are no headers, since the zero value claims "0 remaining".
type ServerView struct {
	// RemainingRequests is x-ratelimit-remaining-requests.
	RemainingRequests int64
	// RemainingTokens is x-ratelimit-remaining-tokens.
	RemainingTokens int64
	// ResetRequests is x-ratelimit-reset-requests: time until the request
	// budget is full again.
	ResetRequests time.Duration
	// ResetTokens is x-ratelimit-reset-tokens.
	ResetTokens time.Duration
	// LimitRequests is x-ratelimit-limit-requests: the provider's requests
	// per minute.
	LimitRequests int64
	// LimitTokens is x-ratelimit-limit-tokens.
	LimitTokens int64
}

// NoServerView returns a ServerView with every field unknown.
func NoServerView() ServerView {
	return ServerView{RemainingRequests: -1, RemainingTokens: -1, ResetRequests: -1, ResetTokens: -1, LimitRequests: -1, LimitTokens: -1}
}

// Snapshot is a budget's state at one instant, for `llmq status` and
// metrics.
type Snapshot struct {
	// Model and Account identify the budget; Key is its Redis key.
	Model, Account, Key string
	// At is the instant (from Config.Now) of the snapshot.
	At time.Time
	// Budget is the configured budget that applies to Model.
	Budget Budget
	// RequestCapacity and TokenCapacity are the buckets' sizes now, less
	// the transit headroom (Config.Transit); 0 means the dimension is
	// unlimited. With a default burst they grow to what the provider's
	// readings prove it holds.
	RequestCapacity, TokenCapacity int64
	// RPM and TPM are the limits in force: the configured ones, or the
	// provider's x-ratelimit-limit-* when lower.
	RPM, TPM int64
	// Factor is the calibration factor: the provider's tokens per estimated
	// token, learned from its x-ratelimit-remaining-tokens readings (1
	// until there is evidence; from FactorMin to FactorMax).
	Factor float64
	// Requests and Tokens are what is available now (0 when unlimited).
	Requests, Tokens float64
	// CooldownUntil is the end of a fleet cooldown; zero when none.
	CooldownUntil time.Time
	// ClaimRequests and ClaimTokens are what the head-of-line waiter is
	// waiting for, until ClaimUntil; all zero when no claim is live.
	ClaimRequests, ClaimTokens int64
	ClaimUntil                 time.Time
}

// Limiter draws from fleet-wide budgets in Redis. It is safe for concurrent
// use; every process of a fleet makes its own, with the same Config.
type Limiter struct {
	rdb    redis.UniversalClient
	cfg    Config
	script *redis.Script
	id     string        // distinguishes this Limiter's claim tickets
	seq    atomic.Uint64 // numbers its claim tickets
	warned sync.Map      // provider limits already reported
}

// New returns a Limiter on rdb. It checks cfg and reports every invalid
// field by name; it does not contact Redis.
func New(rdb redis.UniversalClient, cfg Config) (*Limiter, error) {
	if rdb == nil {
		return nil, errors.New("ratelimit: the Redis client is nil: pass the fleet's Redis client")
	}
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("ratelimit: reading random bytes for claim tickets failed: %w", err)
	}
	return &Limiter{rdb: rdb, cfg: cfg, script: redis.NewScript(budgetLua), id: hex.EncodeToString(b[:])}, nil
}

// Key returns the Redis key of model's budget:
// <prefix>:budget:{<account>:<model>}.
func (l *Limiter) Key(model string) string {
	return l.cfg.Prefix + ":budget:{" + l.cfg.Account + ":" + model + "}"
}

// Budget returns the budget that applies to model: its own, else "default".
func (l *Limiter) Budget(model string) (Budget, bool) {
	if b, ok := l.cfg.Budgets[model]; ok {
		return b, true
	}
	b, ok := l.cfg.Budgets[DefaultModel]
	return b, ok
}

// check returns model's budget, or an error that no retry can cure.
func (l *Limiter) check(model string, cost Cost) (Budget, error) {
	if model == "" {
		return Budget{}, errors.New("ratelimit: model is empty: pass the model the request is for")
	}
	if cost.Requests < 0 || cost.Tokens < 0 {
		return Budget{}, fmt.Errorf("ratelimit: cost for model %q is negative (%d requests, %d tokens): charge zero or more", model, cost.Requests, cost.Tokens)
	}
	b, ok := l.Budget(model)
	if !ok {
		return Budget{}, &NoBudgetError{Model: model}
	}
	rc, tc := b.units(l.cfg.Transit)
	if b.BurstTokens == 0 {
		tc = b.TPM * unit // a default burst serves any cost up to a minute's budget
	}
	if b.BurstRequests == 0 {
		rc = b.RPM * unit
	}
	if tc > 0 && cost.Tokens > tc/unit {
		return Budget{}, fmt.Errorf("%w: model %q: %d tokens asked, the token bucket holds %d (tpm %d, burst %d, transit headroom %s): lower max_tokens or raise the burst",
			ErrTooLarge, model, cost.Tokens, tc/unit, b.TPM, b.BurstTokens, l.cfg.Transit)
	}
	if rc > 0 && cost.Requests > rc/unit {
		return Budget{}, fmt.Errorf("%w: model %q: %d requests asked, the request bucket holds %d (rpm %d, burst_requests %d, transit headroom %s): ask for fewer at once or raise burst_requests",
			ErrTooLarge, model, cost.Requests, rc/unit, b.RPM, b.BurstRequests, l.cfg.Transit)
	}
	return b, nil
}

// run evaluates budget.lua on model's key at now with op's extra arguments.
func (l *Limiter) run(ctx context.Context, op, model string, b Budget, now time.Time, extra ...any) ([]int64, error) {
	args := append([]any{op, now.UnixMilli(), b.RPM, b.TPM, b.BurstRequests, b.BurstTokens,
		l.cfg.Transit.Milliseconds(), l.cfg.BurstWindow.Milliseconds()}, extra...)
	out, err := l.script.Run(ctx, l.rdb, []string{l.Key(model)}, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("ratelimit: %s on budget %s in Redis failed: %w", op, l.Key(model), err)
	}
	return out, nil
}

// Reserve takes cost from model's budget if both its requests and tokens fit
// now, atomically for the whole fleet: it takes both or neither. Otherwise
// it takes nothing and answers OK false with the wait until both would fit
// (and any fleet cooldown has ended). It never blocks beyond one Redis round
// trip. A cost larger than a bucket's capacity returns ErrTooLarge.
func (l *Limiter) Reserve(ctx context.Context, model string, cost Cost) (Reservation, error) {
	b, err := l.check(model, cost)
	if err != nil {
		return Reservation{}, err
	}
	return l.reserve(ctx, model, b, cost, "", -1)
}

// reserve is Reserve with a fairness ticket: when the cost has to wait at
// most claimMax, ticket claims it (see the package doc).
func (l *Limiter) reserve(ctx context.Context, model string, b Budget, cost Cost, ticket string, claimMax time.Duration) (Reservation, error) {
	now := l.cfg.Now()
	out, err := l.run(ctx, "reserve", model, b, now,
		cost.Requests*unit, cost.Tokens*unit, ticket, claimMax.Milliseconds(), ClaimGrace.Milliseconds())
	if err != nil {
		return Reservation{}, err
	}
	if len(out) < 2 {
		return Reservation{}, fmt.Errorf("ratelimit: budget script answered %v, want [ok wait ...]: the script and this binary disagree, redeploy", out)
	}
	res := Reservation{OK: out[0] == 1, Wait: time.Duration(out[1]) * time.Millisecond, Model: model, Cost: cost, At: now}
	if res.OK && len(out) >= 8 {
		res.sumReq, res.sumTok, res.sumEst = out[4], out[5], out[6]
		res.Charged = (out[7] + unit - 1) / unit
	}
	return res, nil
}

// Acquire takes cost from model's budget, blocking while it has to wait:
// it sleeps exactly the wait Reserve answers (no polling) and asks again.
// While it waits it holds the budget's fairness claim, so a large cost is
// not starved by smaller ones. A wait longer than Config.MaxWait, or past
// ctx's deadline, returns a *WaitError at once. While Redis fails it retries
// with a backoff of 100 ms doubling to 1 s until ctx ends: it never proceeds
// without a reservation. On any error the Reservation's OK is false.
func (l *Limiter) Acquire(ctx context.Context, model string, cost Cost) (Reservation, error) {
	b, err := l.check(model, cost)
	if err != nil {
		return Reservation{}, err
	}
	ticket := l.id + ":" + strconv.FormatUint(l.seq.Add(1), 10)
	backoff := minBackoff
	var lastErr error
	for {
		if ctx.Err() != nil {
			return Reservation{}, l.ctxErr(ctx, model, lastErr)
		}
		// Claim only a wait this call will actually sit out.
		maxWait := l.cfg.MaxWait
		if deadline, ok := ctx.Deadline(); ok {
			maxWait = min(maxWait, time.Until(deadline))
		}
		res, err := l.reserve(ctx, model, b, cost, ticket, maxWait)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				return Reservation{}, l.ctxErr(ctx, model, lastErr)
			}
			if sleep(ctx, backoff) != nil {
				return Reservation{}, l.ctxErr(ctx, model, lastErr)
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff, lastErr = minBackoff, nil
		if res.OK {
			return res, nil
		}
		if res.Wait > maxWait {
			return res, &WaitError{Model: model, Cost: cost, Wait: res.Wait, Until: res.At.Add(res.Wait)}
		}
		if sleep(ctx, res.Wait) != nil {
			return Reservation{}, l.ctxErr(ctx, model, nil)
		}
	}
}

func (l *Limiter) ctxErr(ctx context.Context, model string, redisErr error) error {
	if redisErr != nil {
		return fmt.Errorf("ratelimit: no reservation for model %q before the context ended, Redis failing (%w): %w", model, redisErr, ctx.Err())
	}
	return fmt.Errorf("ratelimit: no reservation for model %q before the context ended: %w", model, ctx.Err())
}

// sleep waits d or until ctx ends, whichever is first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reconcile corrects the budget after the call r reserved for, with what
// the provider's x-ratelimit-* headers say (server; NoServerView when there
// were none). r is the reservation of the call, marked r.Refused() when
// the provider answered without charging it (a 429, an error), or a
// Reservation with only Model set for an answer of unknown origin.
//
//   - Refund: with Config.RefundUnused, tokens reserved but not used
//     (actualTokens < r's tokens; -1 = unknown) are given back, never above
//     capacity.
//   - Limits: a provider limit lower than the configured one
//     (x-ratelimit-limit-*) becomes the budget's rate for the whole fleet,
//     and Config.OnProviderLimit is told once.
//   - Remaining: the provider's reading is carried to now (charges the
//     fleet made after r subtracted, the refill since r added) and adopted
//     when lower than the budget; when higher (a slow start, a provider
//     bucket larger than the default burst) it is adopted less one
//     transit's worth, up to the capacity the provider's readings prove.
//     Without r's position among the fleet's charges a reading is only
//     adopted when lower.
//   - Calibration: consecutive readings tell what the provider charged
//     between them; over decayed evidence their ratio to the fleet's
//     estimates is the budget's calibration factor (see the package doc).
//
// ServerView's resets are parsed but not used.
func (l *Limiter) Reconcile(ctx context.Context, r Reservation, actualTokens int64, server ServerView) error {
	b, ok := l.Budget(r.Model)
	if !ok {
		return fmt.Errorf("%w %q: cannot reconcile a reservation no budget made", ErrNoBudget, r.Model)
	}
	if b.RequestCapacity() == 0 && b.TokenCapacity() == 0 {
		return nil // an unlimited budget has no level to correct: no round trip
	}
	l.noteLimit(r.Model, "requests", b.RPM, server.LimitRequests)
	l.noteLimit(r.Model, "tokens", b.TPM, server.LimitTokens)
	var refund int64
	if l.cfg.RefundUnused && r.OK && !r.refused && actualTokens >= 0 && actualTokens < r.Cost.Tokens {
		refund = (r.Cost.Tokens - actualTokens) * unit
	}
	sr, st := int64(-1), int64(-1)
	if server.RemainingRequests >= 0 {
		sr = min(server.RemainingRequests, maxCapacity) * unit
	}
	if server.RemainingTokens >= 0 {
		st = min(server.RemainingTokens, maxCapacity) * unit
	}
	lr, lt := limitArg(server.LimitRequests), limitArg(server.LimitTokens)
	if refund == 0 && sr < 0 && st < 0 && lr < 0 && lt < 0 {
		return nil
	}
	var at int64
	refused := "1"
	if r.OK {
		at = r.At.UnixMilli()
		if !r.refused {
			refused = "0"
		}
	}
	_, err := l.run(ctx, "reconcile", r.Model, b, l.cfg.Now(), refund, sr, st, lr, lt,
		r.sumReq, r.sumTok, r.sumEst, at, r.Charged*unit, refused,
		FactorMin, FactorMax, CalibrationHalfLife.Milliseconds(), calibrationMinPairs, r.Cost.Tokens*unit, FactorDeadBand, FactorDownTrust)
	return err
}

// limitArg is a provider limit as budget.lua takes it: -1 unknown.
func limitArg(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return min(n, maxCapacity)
}

// noteLimit tells Config.OnProviderLimit, once per model, kind and value,
// that the provider's limit is below the configured one.
func (l *Limiter) noteLimit(model, kind string, configured, provider int64) {
	if l.cfg.OnProviderLimit == nil || provider <= 0 || configured <= 0 || provider >= configured {
		return
	}
	if _, seen := l.warned.LoadOrStore(model+"\x00"+kind+"\x00"+strconv.FormatInt(provider, 10), struct{}{}); seen {
		return
	}
	l.cfg.OnProviderLimit(ProviderLimit{Model: model, Kind: kind, Configured: configured, Provider: provider})
}

// ProviderLimit reports a provider limit (x-ratelimit-limit-requests or
// -tokens) below the configured budget: the budget uses the provider's.
type ProviderLimit struct {
	// Model is the budget's model; Kind is "requests" or "tokens".
	Model, Kind string
	// Configured and Provider are the per-minute limits.
	Configured, Provider int64
}

// Cooldown stops the whole fleet from reserving on model's budget until
// until, typically after a 429 with Retry-After: every Reserve answers a
// wait of at least until-now. It only ever extends a cooldown.
func (l *Limiter) Cooldown(ctx context.Context, model string, until time.Time) error {
	b, ok := l.Budget(model)
	if !ok {
		return fmt.Errorf("%w %q: cannot cool down a budget that does not exist", ErrNoBudget, model)
	}
	now := l.cfg.Now()
	if !until.After(now) {
		return nil
	}
	// Round up so the cooldown covers until itself.
	ms := until.UnixMilli()
	if time.UnixMilli(ms).Before(until) {
		ms++
	}
	_, err := l.run(ctx, "cooldown", model, b, now, ms)
	return err
}

// Usage returns model's budget as it stands now, without changing it.
func (l *Limiter) Usage(ctx context.Context, model string) (Snapshot, error) {
	b, ok := l.Budget(model)
	if !ok {
		return Snapshot{}, &NoBudgetError{Model: model}
	}
	now := l.cfg.Now()
	out, err := l.run(ctx, "usage", model, b, now)
	if err != nil {
		return Snapshot{}, err
	}
	if len(out) < 11 {
		return Snapshot{}, fmt.Errorf("ratelimit: budget script answered %v, want 11 numbers: the script and this binary disagree, redeploy", out)
	}
	s := Snapshot{
		Model: model, Account: l.cfg.Account, Key: l.Key(model), At: now, Budget: b,
		Requests: float64(out[0]) / unit, Tokens: float64(out[1]) / unit,
		ClaimRequests: out[3] / unit, ClaimTokens: out[4] / unit,
		RequestCapacity: out[6] / unit, TokenCapacity: out[7] / unit,
		RPM: out[8], TPM: out[9], Factor: float64(out[10]) / 1e6,
	}
	if out[2] > 0 {
		s.CooldownUntil = time.UnixMilli(out[2])
	}
	if out[5] > 0 {
		s.ClaimUntil = time.UnixMilli(out[5])
	}
	return s, nil
}
