package batchapi

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/results"
)

// Defaults of Config (OpenAI's limits where OpenAI has one).
const (
	// DefaultMaxFileBytes is the largest file a tenant may upload (200 MB).
	DefaultMaxFileBytes = 200 << 20
	// DefaultMaxRequests is the most requests one batch may hold.
	DefaultMaxRequests = 50_000
	// DefaultCompletionWindow is what completion_window "24h" grants.
	DefaultCompletionWindow = 24 * time.Hour
	// DefaultFileTTL is how long files and batches are kept (OpenAI keeps
	// batch files 30 days).
	DefaultFileTTL = 30 * 24 * time.Hour
	// DefaultTick is how often each server advances the batches in
	// progress.
	DefaultTick = time.Second
	// DefaultListLimit and MaxListLimit bound a batch list page.
	DefaultListLimit = 20
	MaxListLimit     = 100
	// DefaultFileListLimit and MaxFileListLimit bound a file list page.
	DefaultFileListLimit = 10_000
	MaxFileListLimit     = 10_000
	// defaultLockTTL bounds how long a dead server's claim on a batch
	// lasts; a live one renews it every third of it.
	defaultLockTTL = 30 * time.Second
	// lockMarginDivisor sets the safety margin of a claim, lockTTL /
	// lockMarginDivisor (5 s of the default 30 s): a server stops its work
	// on a batch that long before its claim could lapse, so a command
	// issued just before the work's deadline, or a renewal whose answer
	// came late, still lands inside the claim.
	lockMarginDivisor = 6
	// lazyWait is how long a GET waits for the batch to advance before it
	// answers with what is stored.
	lazyWait = 250 * time.Millisecond
	// cancelCheckRequests is how often a batch's validation reads its cancel:
	// every this many requests of the input (a few milliseconds of
	// validating; the submission reads it at each progress report).
	cancelCheckRequests = 1000
)

// Config configures a Service. Redis, RedisOpt, Prefix, Queue and Clients
// are required; zero values of the rest take the defaults above.
type Config struct {
	// Redis holds every object; RedisOpt connects the producer to the same
	// Redis.
	Redis    redis.UniversalClient
	RedisOpt asynq.RedisConnOpt
	// Prefix and Queue must match the workers' (prefix, queue).
	Prefix string
	Queue  string
	// Clients are the tenants and their keys.
	Clients          []Client
	MaxFileBytes     int64
	MaxRequests      int
	CompletionWindow time.Duration
	FileTTL          time.Duration
	Tick             time.Duration
	// Attempts, ResultTTL and Retention are the producer's (jobs' attempts,
	// result records' life, asynq's retention of finished tasks); zero
	// takes the producer's defaults.
	Attempts  int
	ResultTTL time.Duration
	Retention time.Duration
	// Producer holds more options for the producer that enqueues the
	// batches' jobs, applied after those above: the workers' call timeout
	// and fallback tiers (producer.WithCallTimeout, WithFallbackTiers),
	// from which each job's task timeout is derived.
	Producer []producer.Option
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	Log zerolog.Logger
}

// Service is the Batch API: files and batches per tenant, batches run as
// llmq jobs. It keeps no state of its own: any number of replicas share
// one Redis. It is safe for concurrent use.
type Service struct {
	cfg      Config
	st       *store
	keys     *keyring
	prod     *producer.Producer
	results  *results.Store
	tenantQs map[string]string
	metrics  *apiMetrics
	renew    *redis.Script
	release  *redis.Script
	lockTTL  time.Duration
	log      zerolog.Logger
	// onProgress, when set (by tests), hears each progress report of a
	// batch's enqueue before the report reads the batch's cancel.
	onProgress func(done, total int)
	// onValidating, when set (by tests), hears the requests a batch's
	// validation has read each time before it reads the batch's cancel.
	onValidating func(requests int)
}

// New checks cfg and returns a Service. It fails with ErrNoClients when no
// client is configured.
func New(cfg Config) (*Service, error) {
	if err := checkClients(cfg.Clients); err != nil {
		return nil, err
	}
	if cfg.Redis == nil || cfg.RedisOpt == nil || cfg.Prefix == "" || cfg.Queue == "" {
		return nil, errors.New("batchapi: Redis, RedisOpt, Prefix and Queue are required")
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = DefaultMaxFileBytes
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = DefaultMaxRequests
	}
	if cfg.CompletionWindow <= 0 {
		cfg.CompletionWindow = DefaultCompletionWindow
	}
	if cfg.FileTTL <= 0 {
		cfg.FileTTL = DefaultFileTTL
	}
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	opts := []producer.Option{producer.WithQueue(cfg.Queue), producer.WithPrefix(cfg.Prefix)}
	if cfg.Attempts > 0 {
		opts = append(opts, producer.WithAttempts(cfg.Attempts))
	}
	if cfg.ResultTTL > 0 {
		opts = append(opts, producer.WithResultTTL(cfg.ResultTTL))
	}
	if cfg.Retention > 0 {
		opts = append(opts, producer.WithRetention(cfg.Retention))
	}
	prod, err := producer.New(cfg.RedisOpt, append(opts, cfg.Producer...)...)
	if err != nil {
		return nil, fmt.Errorf("batchapi: %w", err)
	}
	s := &Service{
		cfg:      cfg,
		st:       &store{rdb: cfg.Redis, prefix: cfg.Prefix, fileTTL: cfg.FileTTL},
		keys:     newKeyring(cfg.Clients),
		prod:     prod,
		results:  prod.Store(),
		tenantQs: map[string]string{},
		metrics:  newAPIMetrics(),
		renew:    redis.NewScript(renewLua),
		release:  redis.NewScript(releaseLua),
		lockTTL:  defaultLockTTL,
		log:      cfg.Log,
	}
	for _, c := range cfg.Clients {
		s.tenantQs[c.Name] = TenantQueue(cfg.Queue, c.Name)
	}
	return s, nil
}

// Close releases the producer's connections.
func (s *Service) Close() error { return s.prod.Close() }

// Run advances every active batch each Tick until ctx ends. Every replica
// runs it; a Redis lock per batch lets one at a time work on a batch.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		ids, err := s.cfg.Redis.SMembers(ctx, s.st.activeKey()).Result()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("batchapi: list active batches")
			}
			continue
		}
		for _, id := range ids {
			if err := s.advance(ctx, id); err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Str("batch_id", id).Msg("batchapi: advance batch")
			}
		}
	}
}

// kick advances a batch in the background and waits up to lazyWait for it,
// so a GET sees fresh state without waiting on a long step (validating a
// large file, writing the output).
func (s *Service) kick(ctx context.Context, id string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		if err := s.advance(actx, id); err != nil {
			s.log.Warn().Err(err).Str("batch_id", id).Msg("batchapi: advance batch")
		}
	}()
	select {
	case <-done:
	case <-time.After(lazyWait):
	case <-ctx.Done():
	}
}

// kickAll advances batches in the background, waiting up to lazyWait for
// them together.
func (s *Service) kickAll(ctx context.Context, ids []string) {
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); s.kick(ctx, id) }()
	}
	wg.Wait()
}

// errLockLost is the cause of a lock's context ending because the claim
// lapsed, or may have: another server may be working on the batch.
var errLockLost = errors.New("batch lock lost")

// lock claims batch id for this server. It returns ok=false when another
// holds it. The claim is renewed every third of lockTTL until unlock is
// called. The context it returns ends (cause errLockLost) when renewal
// finds another holder, and at the latest at the claim's deadline: the
// start of the last successful renewal (or of the claim) + lockTTL − a
// margin (lockTTL/lockMarginDivisor). A server that cannot renew (Redis
// unreachable, the process stalled) thus stops its work before its claim
// can expire and pass to another server, not a renewal tick after.
//
// A deadline rather than a fencing token: the work writes Redis through
// asynq and the producer (enqueues, deletes), which cannot check a token,
// so fencing would cover only part of the writes; a deadline covers all
// of them, as long as the process is not frozen between checking its
// context and a write for longer than the margin. Times are measured on
// the monotonic clock, from before each command is sent, so a late answer
// only shortens the claim as this server sees it.
func (s *Service) lock(ctx context.Context, id string) (lctx context.Context, unlock func(), ok bool, err error) {
	token := newID("")
	key := s.st.lockKey(id)
	live := s.lockTTL - s.lockTTL/lockMarginDivisor // how long a claim is worked on after it was set or renewed
	sent := time.Now()
	ok, err = s.cfg.Redis.SetNX(ctx, key, token, s.lockTTL).Result()
	if err != nil || !ok {
		return nil, nil, false, err
	}
	lctx, cancel := context.WithCancelCause(ctx)
	lapse := time.AfterFunc(time.Until(sent.Add(live)), func() {
		s.log.Warn().Str("batch_id", id).Msg("batchapi: could not renew the claim on a batch; stopping its work")
		cancel(errLockLost)
	})
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(s.lockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			sent := time.Now()
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), live)
			held, err := s.renew.Run(rctx, s.cfg.Redis, []string{key}, token, s.lockTTL.Milliseconds()).Int()
			rcancel()
			switch {
			case err == nil && held == 1:
				if !lapse.Stop() {
					return // the deadline passed while renewing: the work has stopped
				}
				lapse.Reset(time.Until(sent.Add(live)))
			case err == nil:
				lapse.Stop()
				s.log.Warn().Str("batch_id", id).Msg("batchapi: lost the claim on a batch; stopping its work")
				cancel(errLockLost)
				return
			}
			// A failed renewal leaves the deadline where it is: the next
			// tick tries again.
		}
	}()
	return lctx, func() {
		close(stop)
		<-stopped
		lapse.Stop()
		cancel(nil)
		_ = s.release.Run(context.WithoutCancel(ctx), s.cfg.Redis, []string{key}, token).Err()
	}, true, nil
}

//go:embed renew.lua
var renewLua string

//go:embed release.lua
var releaseLua string

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}
