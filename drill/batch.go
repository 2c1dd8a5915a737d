package drill

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
)

// batchJSONL returns n short-form JSONL lines whose prompts carry the
// marker the fake upstream's call log keys on.
func batchJSONL(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		id := customID(i)
		fmt.Fprintf(&b, `{"custom_id":%q,"model":"gpt-4o-mini","messages":[{"role":"user","content":"drill-job:%s answer in one word"}],"max_tokens":16}`+"\n", id, id)
	}
	return b.Bytes()
}

func customID(i int) string { return fmt.Sprintf("c%06d", i) }

// enqueue submits n jobs as batch batchID through the Go producer.
func (e *env) enqueue(ctx context.Context, batchID string, n int) error {
	rep, err := e.prod.EnqueueBatch(ctx, bytes.NewReader(batchJSONL(n)), producer.BatchID(batchID))
	if err != nil {
		return fmt.Errorf("enqueue %d jobs: %w", n, err)
	}
	if rep.Enqueued != n {
		return fmt.Errorf("enqueue: %d of %d jobs enqueued (%d duplicates)", rep.Enqueued, n, rep.Duplicates)
	}
	e.logf("enqueued %d jobs as batch %s", n, batchID)
	return nil
}

// queueLeft returns the tasks of the drill's queue not yet finished:
// pending + active + scheduled + retry.
func (e *env) queueLeft(ctx context.Context) (pending, active, scheduled, retry int64, err error) {
	q := "asynq:{" + e.queue + "}:"
	pipe := e.rdb.Pipeline()
	p, a := pipe.LLen(ctx, q+"pending"), pipe.LLen(ctx, q+"active")
	s, r := pipe.ZCard(ctx, q+"scheduled"), pipe.ZCard(ctx, q+"retry")
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("read queue sizes: %w", err)
	}
	return p.Val(), a.Val(), s.Val(), r.Val(), nil
}

// waitDrained waits until no task of the queue is pending, active,
// scheduled or retrying, or within passes; it returns the tasks left.
func (e *env) waitDrained(ctx context.Context, within time.Duration) (int64, time.Duration, error) {
	start := time.Now()
	var left int64
	err := waitUntil(ctx, within, func() (bool, error) {
		p, a, s, r, err := e.queueLeft(ctx)
		if err != nil {
			return false, nil // Redis may be away in some drills; the deadline decides
		}
		left = p + a + s + r
		return left == 0, nil
	})
	if err != nil && ctx.Err() != nil {
		return left, time.Since(start), err
	}
	if err != nil {
		p, a, s, r, _ := e.queueLeft(ctx)
		e.logf("queue not drained within %v: %d pending, %d active, %d scheduled, %d retry", within, p, a, s, r)
	}
	return left, time.Since(start), nil
}

// settle waits (up to within) for the queue to drain, counts the batch's
// results into rep with the invariants every drill shares, and explains
// any task left behind. It returns the tally and how long the drain took.
func (e *env) settle(ctx context.Context, rep *Report, batchID string, n int, within time.Duration) (tally, time.Duration, error) {
	left, took, err := e.waitDrained(ctx, within)
	if err != nil {
		return tally{}, took, err
	}
	t, err := e.count(ctx, batchID, n)
	if err != nil {
		return t, took, err
	}
	t.apply(rep, left)
	if left > 0 {
		e.explainStuck(ctx, rep)
	}
	return t, took, nil
}

// How much of the workers' logs a report quotes for jobs paid twice.
const (
	dupExplained = 3  // jobs explained
	dupLogLines  = 12 // log lines per job
)

// tally is what a batch came to.
type tally struct {
	submitted, stored, succeeded, failed, lost int
	// unclassified counts failed results without a class (Error.Type).
	unclassified int
	// byClass counts failed results by class.
	byClass map[string]int
	// dupJobs counts jobs answered 200 more than once; dupExtra the extra
	// 200s.
	dupJobs, dupExtra int
	// dupWhy holds, for the first duplicated jobs, the workers' log lines
	// about them: why a paid answer was bought again.
	dupWhy []string
	// unlisted counts submitted jobs the batch index does not list.
	unlisted int
	// counters are the batch's own counters (succeeded+failed), which
	// `llmq enqueue --wait` follows.
	counters int
}

// count reads every result of the batch and the fake upstream's call log.
func (e *env) count(ctx context.Context, batchID string, n int) (tally, error) {
	t := tally{submitted: n, byClass: map[string]int{}}
	seen := 0
	err := e.store.Export(ctx, batchID, func(id string, r *jobs.Result) error {
		seen++
		if r == nil {
			return nil
		}
		t.stored++
		if r.Status == jobs.StatusSucceeded {
			t.succeeded++
			return nil
		}
		t.failed++
		if r.Error == nil || r.Error.Type == "" {
			t.unclassified++
			return nil
		}
		t.byClass[r.Error.Type]++
		return nil
	})
	if err != nil {
		return t, fmt.Errorf("count batch %s: %w", batchID, err)
	}
	// A job the batch no longer lists (its enqueue was lost with Redis's
	// data) has no result either: it counts as lost.
	t.unlisted = max(0, n-seen)
	t.lost = n - t.stored
	t.dupJobs, t.dupExtra = e.calls.duplicates()
	for _, id := range e.calls.duplicated(dupExplained) {
		t.dupWhy = append(t.dupWhy, fmt.Sprintf("job %s:%s was answered 200 more than once; its worker log lines:", batchID, id))
		t.dupWhy = append(t.dupWhy, e.workerLines(`:`+id+`"`, dupLogLines)...)
	}
	st, err := e.prod.Batch(ctx, batchID)
	if err != nil {
		return t, err
	}
	t.counters = st.Succeeded + st.Failed
	return t, nil
}

// apply copies the tally into the report's columns and checks the
// invariants every drill shares: nothing lost, nothing stuck, every
// failure classified, the batch counters agree with the results.
func (t tally) apply(r *Report, stuck int64) {
	r.Submitted, r.Stored, r.Duplicates, r.Lost, r.Stuck = t.submitted, t.stored, t.dupJobs, t.lost, int(stuck)
	r.check(t.lost == 0, "%d of %d jobs lost (no result stored; %d not even listed in the batch)", t.lost, t.submitted, t.unlisted)
	r.check(stuck == 0, "%d tasks still pending/active/scheduled/retrying at the deadline", stuck)
	r.check(t.unclassified == 0, "%d dead-lettered jobs carry no classified reason", t.unclassified)
	r.check(t.counters == t.stored, "batch counters say %d done, the results %d: `llmq enqueue --wait` would not see the batch end", t.counters, t.stored)
	r.note("%d succeeded, %d dead-lettered%s", t.succeeded, t.failed, classes(t.byClass))
	for _, line := range t.dupWhy {
		r.note("%s", line)
	}
}

func classes(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	return " (" + sortedCounts(m, ", ") + ")"
}

// sortedCounts renders counters as "key=n" sorted by key, joined by sep.
func sortedCounts[N int | int64](m map[string]N, sep string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, sep)
}

// explainStuck notes, for up to five unfinished active tasks, their lease
// (relative to now) and whether a live asynq server says it is working on
// them: the facts a post-mortem starts from.
func (e *env) explainStuck(ctx context.Context, r *Report) {
	active, err := e.rdb.LRange(ctx, "asynq:{"+e.queue+"}:active", 0, 4).Result()
	if err != nil || len(active) == 0 {
		return
	}
	owners := map[string]int{}
	if srvs, err := e.insp.Servers(); err == nil {
		for _, s := range srvs {
			for _, w := range s.ActiveWorkers {
				owners[w.TaskID] = s.PID
			}
		}
	}
	now := time.Now()
	for _, id := range active {
		lease, err := e.rdb.ZScore(ctx, "asynq:{"+e.queue+"}:lease", id).Result()
		l := "no lease"
		if err == nil {
			l = fmt.Sprintf("lease ends %+.0f s from now", lease-float64(now.Unix()))
		}
		owner := "no live server lists it"
		if pid, ok := owners[id]; ok {
			owner = fmt.Sprintf("server pid %d lists it", pid)
		}
		res := "no result"
		if got, err := e.store.Get(ctx, id); err == nil {
			res = "result " + got.Status
		}
		r.note("stuck active task %s: %s, %s, %s", id, l, owner, res)
	}
}
