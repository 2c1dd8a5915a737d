package producer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/redisconn"
)

// Open takes the Redis URL llmq's configuration takes: no asynq types.
func TestOpenFromARedisURL(t *testing.T) {
	env := llmqtest.Redis(t)
	p, err := producer.Open(env.RedisURL(), producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	id, err := p.Enqueue(ctx, &jobs.Job{ID: "o1", Body: helloBody})
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	if _, err := insp.GetTaskInfo(env.Queue, id); err != nil {
		t.Fatalf("the job is not in the queue: %v", err)
	}
	if _, err := p.Result(ctx, id); !errors.Is(err, producer.ErrPending) {
		t.Fatalf("Result = %v, want ErrPending", err)
	}
}

// No error of Open, or of a producer it made, shows the URL's password:
// a URL it cannot read, a Redis that does not answer.
func TestOpenErrorsNeverShowThePassword(t *testing.T) {
	const secret = "s3cr3t-Pa55"
	for _, raw := range []string{
		"redis://:" + secret + "@127.0.0.1:6379/0?bogus=1",
		"redis://:" + secret + "%zz@127.0.0.1:6379/0",
		"redis+sentinel://:" + secret + "@127.0.0.1:26379",
		"redis://:" + secret + "@127.0.0.1:notaport/0",
		"ftp://:" + secret + "@127.0.0.1/0",
	} {
		_, err := producer.Open(raw)
		var ue *redisconn.Error
		if !errors.As(err, &ue) {
			t.Fatalf("Open(%q) = %v, want a *redisconn.Error", raw, err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("Open's error shows the password: %v", err)
		}
	}
	// Nothing listens on port 1.
	p, err := producer.Open("redis://:"+secret+"@127.0.0.1:1/0", producer.WithQueue("llmq-open-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // go-redis retries a refused dial
	defer cancel()
	_, eerr := p.Enqueue(ctx, &jobs.Job{ID: "x", Body: helloBody})
	_, rerr := p.Result(ctx, "x")
	_, werr := p.Wait(ctx, "x")
	for _, err := range []error{eerr, rerr, werr} {
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Fatalf("a Redis that does not answer gave %v, want an error without the password", err)
		}
	}
}
