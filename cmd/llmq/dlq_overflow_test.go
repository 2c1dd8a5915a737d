package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

// More dead letters than asynq keeps: asynq trims its archive to 10,000
// tasks (deleting the oldest), so 20 jobs a real worker dead-lettered are
// pushed out by 10,000 later ones. llmq's own record keeps them: `dlq
// list` shows all 10,020 and says what asynq dropped, `dlq show` and `dlq
// requeue` work on a dropped one (and the requeued job then succeeds),
// `requeue --all` takes every one.
func TestDLQBeyondAsynqArchiveLimit(t *testing.T) {
	const dead, filler = 20, asynqArchiveLimit
	p := newProcEnv(t, fakeupstream.Config{Faults: fmt.Sprintf("400x%d", dead)}, nil)
	w := p.start("worker", "--concurrency", "4")
	if _, errOut, code := p.run(jsonl(dead), "enqueue", "-", "--batch", "big", "--wait"); code != exitJobsFailed {
		t.Fatalf("enqueue --wait: code %d %s", code, errOut)
	}
	w.stop(t, 15*time.Second)
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	kept, err := store.DeadLetters(ctx(t), p.env.Queue, 0, 100)
	if err != nil || len(kept) != dead {
		t.Fatalf("llmq's record holds %d dead letters (%v), want %d", len(kept), err, dead)
	}
	last := time.Time{}
	for _, d := range kept {
		if d.At.After(last) {
			last = d.At
		}
	}
	// asynq scores its archive in whole seconds: the later tasks must be
	// archived in a later second to be the newer ones.
	waitFor(t, "the next second", 2*time.Second, func() bool { return time.Now().Unix() > last.Unix() })

	// 10,000 more dead letters through asynq's own archive path (its
	// processor archives a task whose handler returns SkipRetry, and trims
	// the archive as it does).
	client := asynq.NewClient(p.env.Opt)
	defer client.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < filler; i += 8 {
				if _, err := client.Enqueue(asynq.NewTask("filler", nil), asynq.Queue(p.env.Queue), asynq.TaskID(fmt.Sprintf("filler-%05d", i)), asynq.MaxRetry(0)); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServer(p.env.Opt, asynq.Config{Concurrency: 64, Queues: map[string]int{p.env.Queue: 1},
		LogLevel: asynq.FatalLevel})
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		return fmt.Errorf("bad prompt template: %w", asynq.SkipRetry)
	})); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	insp := asynq.NewInspector(p.env.Opt)
	defer insp.Close()
	var qi *asynq.QueueInfo
	waitFor(t, "asynq to archive the filler tasks", 3*time.Minute, func() bool {
		qi, err = insp.GetQueueInfo(p.env.Queue)
		return err == nil && qi.Pending == 0 && qi.Active == 0 && qi.Processed == dead+filler
	})
	srv.Shutdown()
	// asynq keeps 9,999 of them (its trim keeps one fewer than its limit).
	archived := qi.Archived
	if archived >= filler || archived < filler-10 {
		t.Fatalf("asynq's archive holds %d tasks, want just under %d", archived, filler)
	}
	for _, d := range kept {
		if _, err := insp.GetTaskInfo(p.env.Queue, d.JobID); !errors.Is(err, asynq.ErrTaskNotFound) {
			t.Fatalf("asynq still has dead letter %s (%v): the test did not overflow its archive", d.JobID, err)
		}
	}

	out, errOut, code := p.run("", "dlq", "list", "--limit", "20000")
	if code != 0 {
		t.Fatalf("dlq list: %d %s", code, errOut)
	}
	if rows := strings.Count(out, "\n") - 1; rows != dead+archived {
		t.Errorf("dlq list shows %d dead letters, want %d", rows, dead+archived)
	}
	for _, d := range kept {
		if !strings.Contains(out, d.JobID+" ") {
			t.Errorf("dlq list lacks %s, which asynq dropped", d.JobID)
		}
	}
	if !strings.Contains(errOut, fmt.Sprintf("%d more were dropped by asynq", dead)) {
		t.Errorf("dlq list does not say what asynq dropped: %s", errOut)
	}

	one := kept[0].JobID
	out, errOut, code = p.run("", "dlq", "show", one)
	if code != 0 || !strings.Contains(out, "kept by llmq") || !strings.Contains(out, "dead_letter: upstream 400") || !strings.Contains(out, `"status": "failed"`) {
		t.Fatalf("dlq show %s: code %d\n%s%s", one, code, out, errOut)
	}
	if out, errOut, code = p.run("", "dlq", "requeue", one); code != 0 || !strings.Contains(out, "requeued 1 job") {
		t.Fatalf("dlq requeue %s: code %d %s %s", one, code, out, errOut)
	}
	w = p.start("worker", "--concurrency", "1")
	waitFor(t, "the requeued job to succeed", 30*time.Second, func() bool {
		r, err := store.Get(ctx(t), one)
		return err == nil && r.Status == jobs.StatusSucceeded
	})
	w.stop(t, 15*time.Second)

	out, errOut, code = p.run("", "dlq", "requeue", "--all")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("requeued %d job(s)", dead-1+archived)) {
		t.Fatalf("dlq requeue --all: code %d %s %s", code, out, errOut)
	}
	for _, d := range kept[1:] {
		if info, err := insp.GetTaskInfo(p.env.Queue, d.JobID); err != nil || info.State != asynq.TaskStatePending {
			t.Errorf("dead letter %s after requeue --all: %+v %v, want pending", d.JobID, info, err)
		}
	}
	if left, err := store.DeadLetters(ctx(t), p.env.Queue, 0, 10); err != nil || len(left) != 0 {
		t.Errorf("llmq still records %d dead letters (%v) after requeue --all", len(left), err)
	}
}
