package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Unlimited reports whether model's budget limits neither requests nor
// tokens (a budget with rpm and tpm 0). Such a budget takes nothing, so a
// caller need not Acquire: it only has to respect a fleet-wide 429
// cooldown, which CooldownIn reads.
func (l *Limiter) Unlimited(model string) bool {
	b, ok := l.Budget(model)
	return ok && b.RequestCapacity() == 0 && b.TokenCapacity() == 0
}

// CooldownIn queues on pipe a read of model's fleet-wide 429 cooldown, so a
// caller can batch it with other reads in one round trip. The returned
// function, called after pipe.Exec, gives the instant the cooldown ends
// (zero when none stands).
func (l *Limiter) CooldownIn(ctx context.Context, pipe redis.Pipeliner, model string) func() (time.Time, error) {
	cmd := pipe.HGet(ctx, l.Key(model), "cd")
	return func() (time.Time, error) {
		s, err := cmd.Result()
		if errors.Is(err, redis.Nil) {
			return time.Time{}, nil
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("ratelimit: read the cooldown of %s: %w", l.Key(model), err)
		}
		ms, _ := strconv.ParseInt(s, 10, 64)
		if ms <= 0 || !time.UnixMilli(ms).After(l.cfg.Now()) {
			return time.Time{}, nil
		}
		return time.UnixMilli(ms), nil
	}
}
