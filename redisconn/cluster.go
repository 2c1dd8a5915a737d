package redisconn

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// ClusterStateReload is how often a cluster client re-reads the slot map
// even when nothing failed (go-redis's default is a minute).
const ClusterStateReload = 5 * time.Second

// ClusterOpt is asynq's cluster option with llmq's failover tuning: asynq
// gets the same client [Conn.NewClient] builds, which finds a promoted
// replica within moments of a failover.
type ClusterOpt struct {
	asynq.RedisClusterClientOpt
	conn *Conn
}

// MakeRedisClient returns a new *redis.ClusterClient, for asynq.
func (o ClusterOpt) MakeRedisClient() any { return o.conn.NewClient() }

// reloadOnError re-reads the cluster's slot map after a command fails for
// any reason but a missing key or the caller's context: a dead master, a
// CLUSTERDOWN or a READONLY answer all mean the map may have changed.
// go-redis coalesces the reloads.
type reloadOnError struct{ c *redis.ClusterClient }

func (h reloadOnError) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnError) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(ctx, err)
		return err
	}
}

func (h reloadOnError) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(ctx, err)
		return err
	}
}

func (h reloadOnError) check(ctx context.Context, err error) {
	if err == nil || errors.Is(err, redis.Nil) || ctx.Err() != nil {
		return
	}
	h.c.ReloadState(ctx)
}
