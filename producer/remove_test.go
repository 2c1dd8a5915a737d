package producer_test

import (
	"context"
	"errors"
	"fmt"
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

// RemoveQueued finds pending tasks near either end of a pending list
// longer than the pages of its look (1000 entries) and stops there: the
// other entries stay, in order. Here the look reads entries 0-1999 and
// 4000-5999 and never the middle. A second call, for a task in the
// middle, reads on to it.
func TestRemoveQueuedFindsTasksAcrossTheList(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	ctx := context.Background()
	const n = 6000
	prefix := "asynq:{" + env.Queue + "}:"
	at := map[int]string{0: "head-0", 1: "head-1", 1500: "head-1500", 3000: "middle", 4200: "tail-1800", n - 2: "tail-1", n - 1: "tail-0"}
	var list, keep []string
	for i := range n {
		id, ok := at[i]
		if !ok {
			id = fmt.Sprintf("other-%d", i)
			keep = append(keep, id)
		}
		list = append(list, id)
	}
	pipe := env.Client.Pipeline()
	pipe.RPush(ctx, prefix+"pending", toAny(list)...)
	for _, id := range list {
		pipe.HSet(ctx, prefix+"t:"+id, "state", "pending")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if keys, _ := env.Client.Keys(context.Background(), prefix+"*").Result(); len(keys) > 0 {
			env.Client.Del(context.Background(), keys...)
		}
	})

	remove := func(ids ...string) {
		t.Helper()
		got, err := p.RemoveQueued(ctx, env.Queue, ids)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range got {
			if r != producer.Removed {
				t.Errorf("%s: %v, want removed", ids[i], r)
			}
		}
		for _, id := range ids {
			if n, _ := env.Client.Exists(ctx, prefix+"t:"+id).Result(); n != 0 {
				t.Errorf("task %s's hash is still there", id)
			}
		}
	}
	check := func(want []string) {
		t.Helper()
		left, err := env.Client.LRange(ctx, prefix+"pending", 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(left, want) {
			t.Fatalf("the pending list keeps %d entries, want %d, in order", len(left), len(want))
		}
	}
	remove("tail-1800", "tail-0", "head-1", "head-1500", "head-0", "tail-1", "head-1") // head-1 twice: one task
	check(slices.Insert(slices.Clone(keep), 2997, "middle"))
	remove("middle")
	check(keep)
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// BenchmarkRemoveQueuedBacklog measures removing 1,000 pending tasks (one
// chunk, one script) from a pending list that also holds a backlog of
// other tasks, with the 1,000 at the head (a batch enqueued after the
// backlog), in the middle, and at the tail (a batch about to run):
//
//	go test -run '^$' -bench BenchmarkRemoveQueuedBacklog -benchtime 5x ./producer/
func BenchmarkRemoveQueuedBacklog(b *testing.B) {
	const backlog, chunk = 300_000, producer.RemoveChunk
	for _, where := range []string{"head", "middle", "tail"} {
		b.Run(fmt.Sprintf("backlog=%d/at=%s", backlog, where), func(b *testing.B) {
			env := llmqtest.Redis(b)
			p := newProducer(b, env)
			ctx := context.Background()
			prefix := "asynq:{" + env.Queue + "}:"
			b.Cleanup(func() {
				env.Client.Del(context.Background(), prefix+"pending")
			})
			others := make([]any, 0, 10_000)
			push := func(n int) { // n other tasks at the head (their hashes are not read)
				for i := 0; i < n; i += cap(others) {
					others = others[:0]
					for j := i; j < min(i+cap(others), n); j++ {
						others = append(others, fmt.Sprintf("other-%d", j))
					}
					if err := env.Client.LPush(ctx, prefix+"pending", others...).Err(); err != nil {
						b.Fatal(err)
					}
				}
			}
			ids := make([]string, chunk)
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				env.Client.Del(ctx, prefix+"pending")
				before := map[string]int{"head": backlog, "middle": backlog / 2, "tail": 0}[where]
				push(before)
				pipe := env.Client.Pipeline()
				for j := range ids {
					ids[j] = fmt.Sprintf("t%d-%d", i, j)
					pipe.LPush(ctx, prefix+"pending", ids[j])
					pipe.HSet(ctx, prefix+"t:"+ids[j], "state", "pending")
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
				push(backlog - before)
				b.StartTimer()
				got, err := p.RemoveQueued(ctx, env.Queue, ids)
				b.StopTimer()
				if err != nil || len(got) != chunk || got[0] != producer.Removed || got[chunk-1] != producer.Removed {
					b.Fatalf("RemoveQueued: %v", err)
				}
				if n, _ := env.Client.LLen(ctx, prefix+"pending").Result(); n != backlog {
					b.Fatalf("%d entries left, want the backlog's %d", n, backlog)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed())/1e6/float64(b.N), "ms/chunk")
		})
	}
}
