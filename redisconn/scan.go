package redisconn

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ScanCount is the COUNT hint of each SCAN call of [Scan].
const ScanCount = 500

// Scan returns every key matching the glob pattern. A plain SCAN on a
// cluster client reads one node only; Scan reads every master of a cluster
// and the one server otherwise. Meant for operators' reads and cleanup,
// never for a job's path.
func Scan(ctx context.Context, rdb redis.UniversalClient, match string) ([]string, error) {
	var (
		mu   sync.Mutex
		keys []string
	)
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, match, ScanCount).Iterator()
		var found []string
		for iter.Next(ctx) {
			found = append(found, iter.Val())
		}
		mu.Lock()
		keys = append(keys, found...)
		mu.Unlock()
		return iter.Err()
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		if err := c.ForEachMaster(ctx, scan); err != nil {
			return nil, err
		}
		return keys, nil
	case *redis.Client:
		err := scan(ctx, c)
		return keys, err
	}
	iter := rdb.Scan(ctx, 0, match, ScanCount).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	return keys, iter.Err()
}
