package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrMiss is returned by Get when no response is cached for the request.
var ErrMiss = errors.New("cache: no cached response for this request")

// DefaultTTL is how long a cached response lives when Cache is given 0.
const DefaultTTL = 24 * time.Hour

// ignored are request fields that do not change the completion: they are
// left out of the cache key.
var ignored = []string{"user", "metadata", "store", "stream", "stream_options"}

// Entry is one cached response.
type Entry struct {
	// Model is the model that served it, as the upstream named it.
	Model string `json:"model"`
	// Body is the upstream's chat.completion body, as received.
	Body json.RawMessage `json:"body"`
	// RequestID is the upstream request id of the call that produced it.
	RequestID string `json:"request_id,omitempty"`
	// StoredAt is when it was cached.
	StoredAt time.Time `json:"stored_at"`
}

// Cache stores successful responses in Redis under
// <prefix>:cache:<sha256 of the normalised request>. It is safe for
// concurrent use.
type Cache struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// New returns a Cache whose entries live ttl (0: DefaultTTL).
func New(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Cache {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Cache{rdb: rdb, prefix: prefix, ttl: ttl}
}

// TTL returns how long entries live.
func (c *Cache) TTL() time.Duration { return c.ttl }

// Key returns the Redis key of the request body's cache entry.
func (c *Cache) Key(body []byte) (string, error) {
	h, err := Hash(body)
	if err != nil {
		return "", err
	}
	return c.prefix + ":cache:" + h, nil
}

// Get returns the response cached for the request body, or ErrMiss.
func (c *Cache) Get(ctx context.Context, body []byte) (*Entry, error) {
	key, err := c.Key(body)
	if err != nil {
		return nil, err
	}
	b, err := c.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrMiss
	}
	if err != nil {
		return nil, fmt.Errorf("cache: read %s: %w", key, err)
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil || !json.Valid(e.Body) {
		return nil, fmt.Errorf("cache: entry %s is corrupt (%v): delete it; the next success rewrites it", key, err)
	}
	return &e, nil
}

// Put caches e as the response to the request body for the Cache's TTL,
// replacing any older one.
func (c *Cache) Put(ctx context.Context, body []byte, e Entry) error {
	key, err := c.Key(body)
	if err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("cache: encode entry: %w", err)
	}
	if err := c.rdb.Set(ctx, key, b, c.ttl).Err(); err != nil {
		return fmt.Errorf("cache: write %s: %w", key, err)
	}
	return nil
}

// Hash returns the hex SHA-256 of the normalised request body: the same for
// two bodies that ask for the same completion. Normalising decodes the JSON,
// drops the fields that do not change the completion (user, metadata,
// store, stream, stream_options), writes numbers in their shortest form
// (1.0 and 1 are the same temperature) and objects with sorted keys. The
// model, the messages (byte for byte) and every other parameter count.
func Hash(body []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return "", fmt.Errorf("cache: request body is not a JSON object: %w", err)
	}
	for _, f := range ignored {
		delete(m, f)
	}
	canon, err := json.Marshal(normalise(m))
	if err != nil {
		return "", fmt.Errorf("cache: normalise request: %w", err)
	}
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:]), nil
}

// normalise rewrites numbers in their shortest form; json.Marshal sorts
// map keys.
func normalise(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalise(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = normalise(e)
		}
		return x
	case json.Number:
		if f, err := strconv.ParseFloat(string(x), 64); err == nil {
			return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
		}
		return x
	}
	return v
}
