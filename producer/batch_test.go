package producer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
)

// endless is an input of valid lines far longer than any limit the tests
// set (it ends after endlessLines, so a reader that does not stop on its
// own fails the test rather than hanging it).
type endless struct {
	n   int
	buf []byte
}

const endlessLines = 100_000

func (e *endless) Read(p []byte) (int, error) {
	if len(e.buf) == 0 {
		if e.n == endlessLines {
			return 0, io.EOF
		}
		e.n++
		e.buf = fmt.Appendf(nil, `{"custom_id":"c%d","model":"m","messages":[{"role":"user","content":"q"}]}`+"\n", e.n)
	}
	n := copy(p, e.buf)
	e.buf = e.buf[n:]
	return n, nil
}

// MaxJobs stops reading at the first request over the limit, so an input
// of any size is refused in bounded memory; nothing is enqueued.
func TestBatchMaxJobsStopsReading(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	in := &endless{}
	_, err := p.EnqueueBatch(context.Background(), in, producer.BatchID("big"), producer.MaxJobs(100), producer.SpoolDir(t.TempDir()))
	var be *producer.BatchError
	if !errors.As(err, &be) || be.TooMany != 100 || be.Invalid != 0 || !strings.Contains(err.Error(), "more than 100 requests") {
		t.Fatalf("err = %v, want a *BatchError with TooMany 100", err)
	}
	if in.n > 200 {
		t.Errorf("read %d lines for a limit of 100", in.n)
	}
	if n := queueSize(t, env); n != 0 {
		t.Fatalf("queue holds %d tasks after a refused batch", n)
	}
	// At the limit, the batch goes through.
	rep, err := p.EnqueueBatch(context.Background(), strings.NewReader(batchInput(100, nil)), producer.BatchID("full"), producer.MaxJobs(100))
	if err != nil || rep.Jobs != 100 {
		t.Fatalf("100 jobs at MaxJobs(100): %+v %v", rep, err)
	}
}

// CheckLine sees each job as its line has it (no custom_id filled in);
// OnProblem hears every problem in input order, where the BatchError lists
// the first MaxReportedProblems; a repeated custom_id is marked.
func TestBatchCheckLineAndOnProblem(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	errNoCustomID := errors.New("custom_id is required")
	bad := map[int]string{3: `{"model":"m","messages":[{"role":"user","content":"no custom id"}]}`, 5: `{"custom_id":"c1","model":"m","messages":[{"role":"user","content":"dup"}]}`}
	for i := 10; i < 10+producer.MaxReportedProblems+20; i++ {
		bad[i] = `{broken`
	}
	var got []*jobs.LineError
	_, err := p.EnqueueBatch(context.Background(), strings.NewReader(batchInput(200, bad)), producer.BatchID("hooks"),
		producer.CheckLine(func(j *jobs.Job) error {
			if j.CustomID == "" {
				return errNoCustomID
			}
			return nil
		}),
		producer.OnProblem(func(le *jobs.LineError) { got = append(got, le) }))
	var be *producer.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("err = %v, want a *BatchError", err)
	}
	want := 2 + producer.MaxReportedProblems + 20
	if len(got) != want || be.Invalid != want || len(be.Lines) != producer.MaxReportedProblems {
		t.Fatalf("OnProblem heard %d problems, BatchError counts %d and lists %d; want %d, %d, %d",
			len(got), be.Invalid, len(be.Lines), want, want, producer.MaxReportedProblems)
	}
	if got[0].Line != 3 || !errors.Is(got[0], errNoCustomID) {
		t.Errorf("first problem %v, want line 3: the check's error", got[0])
	}
	var ve *jobs.ValidationError
	if got[1].Line != 5 || !errors.Is(got[1], producer.ErrDuplicateCustomID) || !errors.As(got[1], &ve) || ve.Problems[0].Path != "custom_id" {
		t.Errorf("second problem %v, want line 5: a duplicate custom_id", got[1])
	}
	for i, le := range got[2:] {
		if le.Line != 10+i || errors.Is(le, producer.ErrDuplicateCustomID) {
			t.Fatalf("problem %d: %v, want line %d", i+2, le, 10+i)
		}
	}
	if n := queueSize(t, env); n != 0 {
		t.Fatalf("queue holds %d tasks after a refused batch", n)
	}
}

func TestBatchWithoutJobs(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	_, err := p.EnqueueBatch(context.Background(), strings.NewReader("\n  \n"), producer.BatchID("empty"))
	if !errors.Is(err, producer.ErrNoJobs) || !errors.Is(err, jobs.ErrInvalid) {
		t.Fatalf("err = %v, want ErrNoJobs and jobs.ErrInvalid", err)
	}
}

// watchedDir is a non-seekable input that, on every read, records the files
// in the spool directory.
type watchedDir struct {
	r     io.Reader
	dir   string
	files []string
}

func (w *watchedDir) Read(p []byte) (int, error) {
	if ents, err := os.ReadDir(w.dir); err == nil {
		for _, e := range ents {
			w.files = append(w.files, e.Name())
		}
	}
	return w.r.Read(p)
}

// An input that cannot seek (stdin) is spooled to a file that has no name
// while the batch is read, so a process killed mid-enqueue leaves nothing
// in the spool directory.
func TestBatchSpoolLeavesNoFile(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	dir := t.TempDir()
	in := &watchedDir{r: strings.NewReader(batchInput(50, nil)), dir: dir}
	rep, err := p.EnqueueBatch(context.Background(), in, producer.BatchID("spooled"), producer.SpoolDir(dir))
	if err != nil || rep.Enqueued != 50 {
		t.Fatalf("enqueue from a pipe: %+v %v", rep, err)
	}
	if len(in.files) != 0 {
		t.Errorf("the spool directory held %v while the batch was read", in.files)
	}
}

// changing is an input whose second read differs from its first: a rewind
// to the start reads second.
type changing struct {
	*strings.Reader
	second  string
	rewound bool
}

func newChanging(first, second string) *changing {
	return &changing{Reader: strings.NewReader(first), second: second}
}

func (c *changing) Seek(offset int64, whence int) (int64, error) {
	if whence == io.SeekStart && offset == 0 {
		c.Reader, c.rewound = strings.NewReader(c.second), true
	}
	return c.Reader.Seek(offset, whence)
}

// The second read of an input validates its jobs again, and so refuses an
// input that changed in between; Immutable (a stored file nobody writes)
// skips that validation, so the changed line is not caught — the proof
// that the second read no longer validates.
func TestBatchImmutableSkipsTheSecondValidation(t *testing.T) {
	valid := batchInput(3, nil)
	changed := batchInput(3, map[int]string{2: `{"custom_id":"c2","model":"m","messages":[{"role":"robot","content":"x"}]}`})
	env := llmqtest.Redis(t)
	p := newProducer(t, env)

	in := newChanging(valid, changed)
	_, err := p.EnqueueBatch(context.Background(), in, producer.BatchID("checked"))
	var ie *producer.IncompleteError
	if !in.rewound || !errors.As(err, &ie) || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("a changed input: %v, want an *IncompleteError saying it changed", err)
	}

	in = newChanging(valid, changed)
	rep, err := p.EnqueueBatch(context.Background(), in, producer.BatchID("trusted"), producer.Immutable())
	if err != nil || rep.Enqueued != 3 {
		t.Fatalf("Immutable: %+v %v, want the 3 jobs enqueued unchecked", rep, err)
	}
}

// A cancel stops the first pass of a piped input at once: while lines keep
// coming, and while the pipe sends nothing (a Read blocked in the pipe is
// not waited for). The error matches the context's; nothing is registered
// or enqueued.
func TestBatchValidationStopsOnCancel(t *testing.T) {
	env := llmqtest.Redis(t)
	p := newProducer(t, env)
	for _, idle := range []bool{false, true} {
		t.Run(fmt.Sprintf("idle=%v", idle), func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pr.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			const before = 1000 // lines the pipe carries before the cancel
			go func() {
				for i := 0; ; i++ {
					if i == before {
						cancel()
						if idle {
							return // the pipe stays open and sends nothing
						}
					}
					if _, err := fmt.Fprintf(pw, `{"custom_id":"c%d","model":"m","messages":[{"role":"user","content":"q"}]}`+"\n", i); err != nil {
						return // EnqueueBatch returned and the test closed the pipe
					}
				}
			}()
			done := make(chan error, 1)
			go func() {
				_, err := p.EnqueueBatch(ctx, pr, producer.BatchID("piped"), producer.SpoolDir(t.TempDir()))
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("err = %v, want context.Canceled", err)
				}
			case <-time.After(time.Minute): // a guard against a hang, not a timing
				pw.CloseWithError(errors.New("test gave up"))
				t.Fatal("EnqueueBatch did not return after its context was cancelled")
			}
			pw.Close()
			if n := queueSize(t, env); n != 0 {
				t.Fatalf("queue holds %d tasks after a cancelled batch", n)
			}
			if _, err := p.Store().Batch(context.Background(), "piped"); err == nil {
				t.Fatal("the cancelled batch was registered")
			}
		})
	}
}
