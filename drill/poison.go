package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/producer"
)

// Poison is drill 4: bad input. The producer must refuse what it can see
// is bad — huge bodies, invalid UTF-8, wrong types, a 10 MB JSONL line —
// with field-path errors and nothing written to Redis. Payloads that
// bypass the producer (raw bytes put in the queue with asynq's client)
// must be dead-lettered by the worker with a result saying why, without a
// crash, while the fleet keeps draining a batch of good jobs.
func Poison(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "4 poison and bad input", Size: o.Size}
	good := o.Size.pick(200, 2000)
	// A 30 s header timeout: the 6 MB job's prompt takes the fake a while
	// to count (seconds under -race).
	e, err := newEnv(ctx, o, setup{name: "poison", fake: fakeupstream.Config{}, concurrency: 8, headerTimeout: 30 * time.Second})
	if err != nil {
		return rep, err
	}
	defer e.close()

	refused, err := e.refusals(ctx, rep)
	if err != nil {
		return rep, err
	}
	rep.note("producer refused %d bad inputs, each with field paths: %s", len(refused), strings.Join(refused, "; "))
	keys, err := e.rdb.Keys(ctx, "asynq:{"+e.queue+"}:*").Result()
	if err != nil {
		return rep, err
	}
	rep.check(len(keys) == 0, "refused input reached Redis: %d asynq keys of the queue exist", len(keys))

	ws, err := e.startFleet(ctx, 2)
	if err != nil {
		return rep, err
	}
	const batch = "poison"
	if err := e.enqueue(ctx, batch, good); err != nil {
		return rep, err
	}
	poison := poisonPayloads()
	client := asynq.NewClient(e.conn.AsynqOpt())
	defer client.Close()
	for _, p := range poison {
		typ := jobs.TaskType
		if p.taskType != "" {
			typ = p.taskType
		}
		if _, err := client.EnqueueContext(ctx, asynq.NewTask(typ, p.payload), asynq.TaskID(p.id), asynq.Queue(e.queue),
			asynq.MaxRetry(5), asynq.Retention(time.Hour)); err != nil { // as many as the workers' attempts
			return rep, fmt.Errorf("place poison %s: %w", p.id, err)
		}
	}
	e.logf("placed %d poison tasks directly in the queue", len(poison))
	t, _, err := e.settle(ctx, rep, batch, good, time.Duration(o.Size.pick(60, 180))*time.Second)
	if err != nil {
		return rep, err
	}
	rep.check(t.succeeded == good, "%d of %d good jobs succeeded", t.succeeded, good)
	var seen []string
	for _, p := range poison {
		info, err := e.insp.GetTaskInfo(e.queue, p.id)
		if err != nil {
			rep.fail("poison %s: task not found: %v", p.id, err)
			continue
		}
		res, rerr := e.store.Get(ctx, p.id)
		switch {
		case p.taskType != "":
			// Not llmq's task type: dead-lettered at once, never retried.
			rep.check(info.State == asynq.TaskStateArchived && info.Retried == 0, "poison %s (task type %q): %s after %d retries, want archived at once", p.id, p.taskType, info.State, info.Retried)
			rep.note("poison %s (foreign task type): %s after %d retries, last error %q",
				p.id, info.State, info.Retried, clip(info.LastErr, 60))
			continue
		case p.valid:
			done := info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived
			rep.check(done && rerr == nil, "%s: state %s, result %v", p.id, info.State, rerr)
		default:
			rep.check(info.State == asynq.TaskStateArchived, "poison %s: state %s, want archived (dead-lettered)", p.id, info.State)
			rep.check(info.Retried == 0, "poison %s was retried %d times; poison is dead-lettered at once", p.id, info.Retried)
			if rerr != nil {
				rep.fail("poison %s: no failed result stored: %v", p.id, rerr)
			} else if res.Status != jobs.StatusFailed || res.Error == nil || res.Error.Type == "" {
				rep.fail("poison %s: result %s without a classified error", p.id, res.Status)
			}
		}
		if rerr == nil && res.Error != nil {
			seen = append(seen, fmt.Sprintf("%s→%s", p.id, res.Error.Type))
		} else if rerr == nil {
			seen = append(seen, fmt.Sprintf("%s→%s", p.id, res.Status))
		}
	}
	rep.note("poison outcomes: %s", strings.Join(seen, ", "))
	for _, w := range ws {
		rep.check(w.Alive(), "worker %d died: %s", w.N, tail(w.LogPath, 3))
		rep.check(countLines(w.LogPath, "panic") == 0, "worker %d logged a panic", w.N)
	}
	return rep, nil
}

// refusals submits bad input through the Go producer and the CLI and
// checks every refusal names field paths. It returns a line per refusal.
func (e *env) refusals(ctx context.Context, rep *Report) ([]string, error) {
	body := func(content string) []byte {
		return []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"` + content + `"}]}`)
	}
	singles := []struct {
		name string
		body []byte
	}{
		{"9 MB prompt", body(strings.Repeat("a", 9<<20))},
		{"invalid UTF-8", body("bad \xff\xfe bytes")},
		{"wrong types", []byte(`{"model":5,"messages":"hi","max_tokens":"ten","temperature":"hot","stream":"yes"}`)},
		{"body not an object", []byte(`[1,2,3]`)},
		{"bad message", []byte(`{"model":"m","messages":[{"role":"robot","content":7},{"content":"x"}]}`)},
	}
	var out []string
	for i, s := range singles {
		_, err := e.prod.Enqueue(ctx, &jobs.Job{ID: fmt.Sprintf("bad-%d", i), Body: s.body})
		paths, ok := fieldPaths(err)
		rep.check(ok, "producer %s: refusal without field paths: %v", s.name, err)
		out = append(out, s.name+" ["+strings.Join(paths, ",")+"]")
	}
	good := string(batchJSONL(2))
	batches := []struct {
		name  string
		jsonl string
	}{
		{"10 MB JSONL line", good + `{"custom_id":"big","model":"m","messages":[{"role":"user","content":"` + strings.Repeat("b", 10<<20) + `"}]}` + "\n"},
		{"JSONL with bad lines", good + "{\"custom_id\":\"u\",\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}\n" +
			`{"custom_id":"t","model":["m"],"messages":[{"role":"user","content":"x"}],"n":"2"}` + "\n" + `not json` + "\n"},
	}
	for _, b := range batches {
		_, err := e.prod.EnqueueBatch(ctx, strings.NewReader(b.jsonl), producer.BatchID("bad"))
		paths, ok := fieldPaths(err)
		rep.check(ok, "producer batch %s: refusal without field paths: %v", b.name, err)
		out = append(out, b.name+" ["+strings.Join(paths, ",")+"]")
	}
	_, stderr, err := e.cli(ctx, strings.NewReader(batches[1].jsonl), "enqueue", "-", "--batch", "bad-cli")
	rep.check(err != nil, "llmq enqueue accepted a batch with bad lines")
	rep.check(strings.Contains(stderr, "line 4:") && strings.Contains(stderr, "model:"), "llmq enqueue's refusal does not name lines and fields: %s", clip(stderr, 200))
	out = append(out, "llmq enqueue CLI (exit≠0, lines+fields on stderr)")
	return out, nil
}

// fieldPaths returns the field paths an enqueue refusal names, and whether
// the error is a refusal (jobs.ErrInvalid) in which every problem has a
// path (a line too long counts as its line).
func fieldPaths(err error) ([]string, bool) {
	if err == nil || !errors.Is(err, jobs.ErrInvalid) {
		return nil, false
	}
	var paths []string
	ok := true
	collect := func(err error) {
		var ve *jobs.ValidationError
		switch {
		case errors.As(err, &ve):
			for _, p := range ve.Problems {
				ok = ok && p.Path != ""
				paths = append(paths, p.Path)
			}
		case errors.Is(err, jobs.ErrLineTooLong):
			paths = append(paths, "(line too long)")
		default:
			paths = append(paths, "?"+clip(err.Error(), 40))
			ok = false
		}
	}
	var be *producer.BatchError
	if errors.As(err, &be) {
		for _, le := range be.Lines {
			n := len(paths)
			collect(le.Err)
			for i := n; i < len(paths); i++ {
				paths[i] = fmt.Sprintf("line %d:%s", le.Line, paths[i])
			}
		}
		return paths, ok && len(paths) > 0
	}
	collect(err)
	return paths, ok && len(paths) > 0
}

// poisonTask is a payload put in the queue without the producer.
type poisonTask struct {
	id       string
	payload  []byte
	taskType string // "" = llmq's task type
	valid    bool   // a valid (if extreme) job: it must run or be dead-lettered with a reason
}

func poisonPayloads() []poisonTask {
	huge := func(id string, n int) []byte {
		return []byte(`{"id":"` + id + `","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"` + strings.Repeat("z ", n/2) + `"}]}}`)
	}
	return []poisonTask{
		{id: "poison-raw-bytes", payload: []byte("\x00\xffnot json at all\x01")},
		{id: "poison-empty", payload: nil},
		{id: "poison-null", payload: []byte("null")},
		{id: "poison-array", payload: []byte(`[1,2,3]`)},
		{id: "poison-wrong-types", payload: []byte(`{"id":5,"body":{"model":5}}`)},
		{id: "poison-body-string", payload: []byte(`{"id":"poison-body-string","body":"hello"}`)},
		{id: "poison-invalid-utf8", payload: []byte("{\"id\":\"poison-invalid-utf8\",\"body\":{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"bad \xff\xfe\"}]}}")},
		{id: "poison-10mb", payload: huge("poison-10mb", 10<<20)},
		{id: "poison-truncated", payload: bytes.TrimSuffix(huge("poison-truncated", 1000), []byte("}}"))},
		{id: "huge-valid-6mb", payload: huge("huge-valid-6mb", 6<<20), valid: true},
		{id: "poison-foreign-type", payload: []byte(`{}`), taskType: "someone:else"},
	}
}
