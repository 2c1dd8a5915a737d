package breaker

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// AllowIn queues on pipe a read of model's state that answers Allow
// without a script when the breaker is closed, the common case, so a
// caller can batch it with other reads in one round trip. The returned
// function, called after pipe.Exec, gives the Permit with settled true when
// the read decided it (closed: allowed); settled false means the breaker is
// not closed (or the read failed) and the caller must ask Allow.
func (b *Breaker) AllowIn(ctx context.Context, pipe redis.Pipeliner, model string) func() (p Permit, settled bool) {
	cmd := pipe.HGet(ctx, b.Key(model), "state")
	return func() (Permit, bool) {
		state, err := cmd.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return Permit{Model: model}, false
		}
		if state != "" && State(state) != Closed {
			return Permit{Model: model}, false
		}
		return Permit{Model: model, Allowed: true, State: Closed}, true
	}
}
