// Package hold keeps the fleet-wide hold state of an upstream account in
// Redis. A hold is a fault of the account, not of a job (a revoked key, an
// exhausted quota): while it stands, no worker process calls the upstream
// for that account, and jobs wait without burning attempts. A hold ends when
// the key changes (the worker sees a new key fingerprint) or an operator runs
// `llmq resume`.
package hold

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// State describes an active hold.
type State struct {
	Account string `json:"account"`
	// Class is the failure class that caused it: "auth" or "quota".
	Class string `json:"class"`
	// Reason is the upstream error, readable by an operator.
	Reason string `json:"reason"`
	// KeyFingerprint identifies (without revealing) the key that failed; a
	// worker holding a different key may lift the hold.
	KeyFingerprint string    `json:"key_fingerprint"`
	Since          time.Time `json:"since"`
}

// Store reads and writes holds. It is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewStore returns a Store whose keys start with prefix.
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, prefix: prefix}
}

func (s *Store) key(account string) string { return s.prefix + ":hold:{" + account + "}" }

// Set places a hold unless one stands already; created reports whether this
// call placed it (so exactly one process raises the alarm).
func (s *Store) Set(ctx context.Context, st State) (created bool, err error) {
	b, err := json.Marshal(st)
	if err != nil {
		return false, fmt.Errorf("hold account %q: encode: %w", st.Account, err)
	}
	created, err = s.rdb.SetNX(ctx, s.key(st.Account), b, 0).Result()
	if err != nil {
		return false, fmt.Errorf("hold account %q: %w", st.Account, err)
	}
	return created, nil
}

// Get returns the account's hold, or nil when calls may proceed.
func (s *Store) Get(ctx context.Context, account string) (*State, error) {
	return decodeHold(account, s.rdb.Get(ctx, s.key(account)))
}

// Clear lifts the account's hold; cleared reports whether one stood.
func (s *Store) Clear(ctx context.Context, account string) (cleared bool, err error) {
	n, err := s.rdb.Del(ctx, s.key(account)).Result()
	if err != nil {
		return false, fmt.Errorf("lift hold of account %q: %w", account, err)
	}
	return n > 0, nil
}

// clearIfScript deletes the hold only while it still names the given key
// fingerprint: one atomic compare-and-delete.
var clearIfScript = `
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, st = pcall(cjson.decode, v)
if ok and type(st) == 'table' and st['key_fingerprint'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`

// ClearIf lifts the hold only if it is still the one recorded for
// fingerprint, so a worker with a fresh key does not erase a newer hold
// raised against that fresh key. It is atomic.
func (s *Store) ClearIf(ctx context.Context, account, fingerprint string) (bool, error) {
	n, err := s.rdb.Eval(ctx, clearIfScript, []string{s.key(account)}, fingerprint).Int()
	if err != nil {
		return false, fmt.Errorf("lift hold of account %q: %w", account, err)
	}
	return n > 0, nil
}

// GetIn queues a read of the account's hold on pipe, so a caller can batch
// it with other reads in one round trip. The returned function, called
// after pipe.Exec, answers as Get.
func (s *Store) GetIn(ctx context.Context, pipe redis.Pipeliner, account string) func() (*State, error) {
	cmd := pipe.Get(ctx, s.key(account))
	return func() (*State, error) { return decodeHold(account, cmd) }
}

func decodeHold(account string, cmd *redis.StringCmd) (*State, error) {
	b, err := cmd.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read hold of account %q: %w", account, err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode hold of account %q: %w", account, err)
	}
	return &st, nil
}
