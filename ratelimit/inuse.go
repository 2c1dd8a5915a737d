package ratelimit

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// scanCount is the COUNT hint of the SCAN that InUse runs.
const scanCount = 1000

// InUse returns, sorted, the models whose budgets of this account have
// state in Redis: models called within about twice their budget's fill time
// (an idle budget's hash expires). Each applies its own budget or the
// default one (Budget tells which). It scans every master of a Redis
// Cluster.
func (l *Limiter) InUse(ctx context.Context) ([]string, error) {
	head := l.Key("")
	head = head[:len(head)-1] // "<prefix>:budget:{<account>:"
	pattern := globEscape(head) + "*}"
	var (
		mu     sync.Mutex
		models []string
	)
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, scanCount).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			mu.Lock()
			models = append(models, strings.TrimSuffix(strings.TrimPrefix(k, head), "}"))
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := l.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, l.rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("ratelimit: list the budgets in use: %w", err)
	}
	sort.Strings(models)
	return dedupe(models), nil
}

func dedupe(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}

// globEscape quotes the characters SCAN's MATCH pattern treats specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
