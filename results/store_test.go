package results_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/results"
)

func TestSaveIsIdempotentAndCountsOnce(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	s := results.NewStore(env.Client, env.Prefix, time.Hour)
	if _, err := s.AddToBatch(ctx, "b1", []results.BatchEntry{{JobID: "b1:a", Line: 1}, {JobID: "b1:b", Line: 2}}); err != nil {
		t.Fatal(err)
	}
	// Registering again must not grow the total.
	if n, err := s.AddToBatch(ctx, "b1", []results.BatchEntry{{JobID: "b1:a", Line: 1}}); err != nil || n != 0 {
		t.Fatalf("re-register: n=%d err=%v, want 0 new", n, err)
	}
	steps := []struct {
		id, status string
		want       results.Transition
		ok, failed int
	}{
		{"b1:a", jobs.StatusFailed, results.Created, 0, 1},
		{"b1:a", jobs.StatusFailed, results.Replaced, 0, 1},
		{"b1:a", jobs.StatusSucceeded, results.Replaced, 1, 0},
		{"b1:a", jobs.StatusSucceeded, results.Kept, 1, 0},
		{"b1:a", jobs.StatusFailed, results.Kept, 1, 0},
		{"b1:b", jobs.StatusSucceeded, results.Created, 2, 0},
	}
	for i, st := range steps {
		tr, err := s.Save(ctx, &jobs.Result{JobID: st.id, BatchID: "b1", Status: st.status, Attempts: i})
		if err != nil {
			t.Fatal(err)
		}
		if tr != st.want {
			t.Errorf("step %d: transition %q, want %q", i, tr, st.want)
		}
		b, err := s.Batch(ctx, "b1")
		if err != nil {
			t.Fatal(err)
		}
		if b.Total != 2 || b.Succeeded != st.ok || b.Failed != st.failed {
			t.Errorf("step %d: batch %+v, want total 2 succeeded %d failed %d", i, b, st.ok, st.failed)
		}
	}
	r, err := s.Get(ctx, "b1:a")
	if err != nil || r.Status != jobs.StatusSucceeded || r.Attempts != 2 {
		t.Fatalf("Get = %+v, %v: the first success must be kept", r, err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, results.ErrNotFound) || err.Error() != `job "nope": result not found` {
		t.Errorf("Get(missing) = %v, want ErrNotFound naming the job", err)
	}
	if _, err := s.Batch(ctx, "nope"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("Batch(missing) = %v, want ErrNotFound", err)
	}
}

func TestExportInInputOrderAcrossPages(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	s := results.NewStore(env.Client, env.Prefix, time.Hour)
	const n = 1203
	entries := make([]results.BatchEntry, n)
	for i := range entries {
		entries[i] = results.BatchEntry{JobID: fmt.Sprintf("b:%04d", n-i), Line: i + 1}
	}
	if _, err := s.AddToBatch(ctx, "b", entries); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 2 {
		if _, err := s.Save(ctx, &jobs.Result{JobID: entries[i].JobID, BatchID: "b", Status: jobs.StatusSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	var seen, missing int
	err := s.Export(ctx, "b", func(id string, r *jobs.Result) error {
		if id != entries[seen].JobID {
			return fmt.Errorf("position %d: got %s, want %s (input order)", seen, id, entries[seen].JobID)
		}
		if (r == nil) != (seen%2 == 1) {
			return fmt.Errorf("position %d: result presence wrong", seen)
		}
		if r == nil {
			missing++
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != n || missing != n/2 {
		t.Errorf("exported %d (missing %d), want %d (%d)", seen, missing, n, n/2)
	}
}

// A command re-sent after a lost reply, or a job stored before a crash and
// seen again, must not move the counters twice.
func TestCountersAreIdempotent(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	s := results.NewStore(env.Client, env.Prefix, time.Hour)
	entries := []results.BatchEntry{{JobID: "b:1", Line: 1}, {JobID: "b:2", Line: 2}}
	for range 3 {
		if _, err := s.AddToBatch(ctx, "b", entries); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if err := s.Count(ctx, "b", "b:1", jobs.StatusFailed); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := s.Count(ctx, "b", "b:1", jobs.StatusSucceeded); err != nil {
			t.Fatal(err)
		}
	}
	// A late failure never replaces a success.
	if err := s.Count(ctx, "b", "b:1", jobs.StatusFailed); err != nil {
		t.Fatal(err)
	}
	st, err := s.Batch(ctx, "b")
	if err != nil || st.Total != 2 || st.Succeeded != 1 || st.Failed != 0 {
		t.Fatalf("batch %+v %v, want total 2, 1 succeeded, 0 failed", st, err)
	}
	// A result stored before a crash (counters not yet moved) is counted
	// when Save sees the job again, even though the result is kept.
	if _, err := env.Client.Set(ctx, env.Prefix+":result:b:2", `{"job_id":"b:2","batch_id":"b","status":"succeeded"}`, time.Hour).Result(); err != nil {
		t.Fatal(err)
	}
	tr, err := s.Save(ctx, &jobs.Result{JobID: "b:2", BatchID: "b", Status: jobs.StatusSucceeded})
	if err != nil || tr != results.Kept {
		t.Fatalf("Save = %v %v, want kept", tr, err)
	}
	if st, _ := s.Batch(ctx, "b"); st.Succeeded != 2 || !st.Done() {
		t.Fatalf("batch %+v, want the stored success counted", st)
	}
}

// With's commands go in the save's pipeline, with the record as stored.
func TestSaveWithQueuesCommandsBesideTheSave(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	s := results.NewStore(env.Client, env.Prefix, time.Hour)
	if _, err := s.AddToBatch(ctx, "w", []results.BatchEntry{{JobID: "w:1", Line: 1}, {JobID: "w:2", Line: 2}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"w:1", "w:2"} {
		side := env.Prefix + ":side:" + id
		var cmd *redis.IntCmd
		tr, err := s.Save(ctx, &jobs.Result{JobID: id, BatchID: "w", Status: jobs.StatusSucceeded},
			results.With(func(pipe redis.Pipeliner, record []byte) { cmd = pipe.HSet(ctx, side, "result", record) }))
		if err != nil || tr != results.Created {
			t.Fatalf("%s: Save = %v %v, want created", id, tr, err)
		}
		if cmd == nil || cmd.Err() != nil {
			t.Fatalf("%s: With's command did not run: %v", id, cmd)
		}
		stored, err := env.Client.Get(ctx, env.Prefix+":result:"+id).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := env.Client.HGet(ctx, side, "result").Result(); err != nil || got != stored {
			t.Errorf("%s: With got %q (%v), want the stored record %q", id, got, err, stored)
		}
	}
	if st, err := s.Batch(ctx, "w"); err != nil || st.Succeeded != 2 {
		t.Errorf("batch %+v %v, want both counted", st, err)
	}
}
