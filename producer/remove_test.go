package producer_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// RemoveQueued deletes what asynq's Inspector.DeleteTask would, and as it
// would: pending (the other pending tasks stay, in order), scheduled and
// unique tasks go (a unique task's lock too); an active task, run by a
// real asynq server, is left to finish; an id with no task is reported
// so. A second call changes nothing. This also fails when an asynq upgrade
// moves the keys RemoveQueued reads.
func TestRemoveQueuedAsAsynq(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	c := asynq.NewClient(env.Opt)
	defer c.Close()
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	enqueue := func(id string, opts ...asynq.Option) {
		t.Helper()
		if _, err := c.Enqueue(asynq.NewTask("t", nil), append(opts, asynq.Queue(env.Queue), asynq.TaskID(id))...); err != nil {
			t.Fatal(err)
		}
	}

	// A task a real server runs, and holds until the test lets it go.
	release, started := make(chan struct{}), make(chan struct{})
	srv := asynq.NewServer(env.Opt, asynq.Config{Queues: map[string]int{env.Queue: 1}, Concurrency: 1, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("t", func(ctx context.Context, _ *asynq.Task) error {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	defer close(release)
	enqueue("active")
	select {
	case <-started:
	case <-time.After(time.Minute): // a guard against a hang, not a timing
		t.Fatal("the server did not start the task")
	}

	for _, id := range []string{"keep-1", "p1", "keep-2", "p2", "keep-3"} {
		enqueue(id)
	}
	enqueue("s1", asynq.ProcessIn(time.Hour))
	enqueue("u1", asynq.Unique(time.Hour))

	ids := []string{"p1", "active", "s1", "missing", "p2", "u1"}
	got, err := p.RemoveQueued(context.Background(), env.Queue, ids)
	want := []producer.Removal{producer.Removed, producer.InFlight, producer.Removed, producer.NotQueued, producer.Removed, producer.Removed}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("RemoveQueued = %v, %v; want %v", got, err, want)
	}
	for _, id := range []string{"p1", "p2", "s1", "u1"} {
		if _, err := insp.GetTaskInfo(env.Queue, id); !errors.Is(err, asynq.ErrTaskNotFound) {
			t.Errorf("task %s: %v, want it deleted", id, err)
		}
	}
	if info, err := insp.GetTaskInfo(env.Queue, "active"); err != nil || info.State != asynq.TaskStateActive {
		t.Errorf("active task: %+v %v", info, err)
	}
	pending, err := insp.ListPendingTasks(env.Queue)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, ti := range pending {
		left = append(left, ti.ID)
	}
	if !slices.Equal(left, []string{"keep-1", "keep-2", "keep-3"}) {
		t.Errorf("pending tasks left %v, want keep-1, keep-2, keep-3 in order", left)
	}
	if qi, err := insp.GetQueueInfo(env.Queue); err != nil || qi.Scheduled != 0 || qi.Pending != 3 {
		t.Errorf("queue: %+v %v", qi, err)
	}
	enqueue("u1", asynq.Unique(time.Hour)) // its unique lock went with it

	got, err = p.RemoveQueued(context.Background(), env.Queue, ids[:5])
	want = []producer.Removal{producer.NotQueued, producer.InFlight, producer.NotQueued, producer.NotQueued, producer.NotQueued}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("again: RemoveQueued = %v, %v; want %v", got, err, want)
	}
}

// A task RemoveQueued cannot delete (here an aggregating task with no
// group: a damaged hash) is left alone and changes nothing else: the
// script reads everything before it writes, so the pending task beside it
// goes whole — its hash and its list entry — and the list keeps the rest.
func TestRemoveQueuedWritesNothingHalfway(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	c := asynq.NewClient(env.Opt)
	defer c.Close()
	for _, id := range []string{"keep", "p1"} {
		if _, err := c.Enqueue(asynq.NewTask("t", nil), asynq.Queue(env.Queue), asynq.TaskID(id)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	damaged := "asynq:{" + env.Queue + "}:t:bad"
	if err := env.Client.HSet(ctx, damaged, "state", "aggregating").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.Del(context.Background(), damaged) })
	got, err := p.RemoveQueued(ctx, env.Queue, []string{"p1", "bad"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []producer.Removal{producer.Removed, producer.InFlight}; !slices.Equal(got, want) {
		t.Fatalf("RemoveQueued = %v, want %v", got, want)
	}
	list, err := env.Client.LRange(ctx, "asynq:{"+env.Queue+"}:pending", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(list, []string{"keep"}) {
		t.Fatalf("pending list %v, want [keep]", list)
	}
	if n, _ := env.Client.Exists(ctx, "asynq:{"+env.Queue+"}:t:p1", damaged).Result(); n != 1 {
		t.Fatalf("%d of p1's and the damaged task's hashes exist, want only the damaged one", n)
	}
}
