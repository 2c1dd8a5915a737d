package drill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/llmq/llmq/redistopo"
	"github.com/redis/go-redis/v9"
)

// startRedis starts a redis-server the drill owns on a free port with dir
// as its data directory, so a drill can kill and restart it (and read INFO
// memory) without touching anyone else's Redis; fsync selects AOF
// persistence ("" none, "always" or "everysec").
func startRedis(ctx context.Context, dir, fsync string) (*redistopo.Server, error) {
	var aof []string
	if fsync != "" {
		aof = []string{"--appendonly", "yes", "--appendfsync", fsync}
	}
	s, err := redistopo.StartServer(ctx, dir, aof...)
	if err != nil {
		return nil, fmt.Errorf("%w (is redis-server installed? apt-get install redis-server)", err)
	}
	return s, nil
}

// usedMemory returns INFO memory's used_memory in bytes.
func usedMemory(ctx context.Context, c redis.UniversalClient) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("INFO memory: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("INFO memory: no used_memory line")
}
