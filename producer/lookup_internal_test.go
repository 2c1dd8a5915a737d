package producer

import (
	"context"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/llmqtest"
)

// The look-up reads asynq's keys directly: this fails when an asynq upgrade
// moves them.
func TestTaskKeyIsAsynqs(t *testing.T) {
	env := llmqtest.Redis(t)
	c := asynq.NewClient(env.Opt)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("probe", nil), asynq.Queue(env.Queue), asynq.TaskID("k1")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	state, err := env.Client.HGet(ctx, taskKey(env.Queue, "k1"), "state").Result()
	if err != nil || state != "pending" {
		t.Fatalf("HGET %s state = %q, %v; want pending: asynq's task key moved", taskKey(env.Queue, "k1"), state, err)
	}
	if ok, err := env.Client.SIsMember(ctx, asynqQueuesKey, env.Queue).Result(); err != nil || !ok {
		t.Fatalf("SISMEMBER %s %s = %v, %v: asynq's queue set moved", asynqQueuesKey, env.Queue, ok, err)
	}
}
