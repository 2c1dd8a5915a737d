package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

func jsonl(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `{"custom_id":"c%d","model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %d"}],"max_tokens":16}`+"\n", i, i)
	}
	return b.String()
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// The operator's path: enqueue a file and wait, export results and errors.
func TestEnqueueWaitAndExport(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Faults: "400,400,400"}, nil)
	w := p.start("worker", "--concurrency", "4")
	out, errOut, code := p.run(jsonl(60), "enqueue", "-", "--batch", "cli", "--wait")
	if code != exitJobsFailed || strings.TrimSpace(out) != "cli" {
		t.Fatalf("enqueue --wait: code %d stdout %q stderr %s; want exit %d (3 jobs dead-lettered) and the batch id", code, out, errOut, exitJobsFailed)
	}
	if !strings.Contains(errOut, "3 of 60 jobs failed") {
		t.Errorf("stderr lacks the counts: %s", errOut)
	}
	dir := t.TempDir()
	okPath, errPath := filepath.Join(dir, "out.jsonl"), filepath.Join(dir, "errors.jsonl")
	_, errOut, code = p.run("", "results", "--batch", "cli", "-o", okPath, "--errors", errPath)
	if code != 0 {
		t.Fatalf("results: code %d: %s", code, errOut)
	}
	oks, bads := readLines(t, okPath), readLines(t, errPath)
	if len(oks) != 57 || len(bads) != 3 {
		t.Fatalf("%d result lines and %d error lines, want 57 and 3", len(oks), len(bads))
	}
	var line jobs.OutputLine
	if err := json.Unmarshal([]byte(bads[0]), &line); err != nil || line.Error == nil || line.Error.Code != "invalid_type" || line.Response.StatusCode != 400 {
		t.Errorf("error line %s", bads[0])
	}
	if !strings.Contains(errOut, "57 done, 3 failed, 0 pending of 60") {
		t.Errorf("summary: %s", errOut)
	}
	// Re-enqueueing the same batch changes nothing.
	_, errOut, code = p.run(jsonl(60), "enqueue", "-", "--batch", "cli")
	if code != 0 || !strings.Contains(errOut, "0 enqueued, 60 already enqueued") {
		t.Errorf("re-enqueue: code %d: %s", code, errOut)
	}
	w.stop(t, 10*time.Second)
	if strings.Contains(w.logs.String(), "sk-proc-test-key") {
		t.Error("the API key appears in the worker's log")
	}
	if !strings.Contains(w.logs.String(), `"event":"upstream_call"`) {
		t.Error("the worker logged no upstream_call events")
	}
}

func TestEnqueueRefusesInvalidFile(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	in := jsonl(3) + `{"custom_id":"x","model":"m","messages":[{"role":"wizard","content":"x"}]}` + "\n"
	_, errOut, code := p.run(in, "enqueue", "-", "--batch", "bad")
	if code == 0 || !strings.Contains(errOut, "line 4: invalid job: messages[0].role: must be one of system,user,assistant,tool,developer") {
		t.Fatalf("code %d stderr %s", code, errOut)
	}
	_, errOut, code = p.run("", "results", "--batch", "bad")
	if code == 0 || !strings.Contains(errOut, "unknown batch id") {
		t.Errorf("a refused batch must not exist: code %d %s", code, errOut)
	}
}

func TestConfigPrintsEffectiveSettingsWithoutKey(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	out, errOut, code := p.run("", "config")
	if code != 0 {
		t.Fatalf("config: %d %s", code, errOut)
	}
	for _, want := range []string{"connect_timeout: 5s", "base: 20ms", "api key: from OPENAI_API_KEY", "failure_rate: 50", "min_calls: 20"} {
		if !strings.Contains(out, want) {
			t.Errorf("config output lacks %q", want)
		}
	}
	if strings.Contains(out, "sk-proc-test-key") {
		t.Error("config printed the API key")
	}
}

// SIGTERM mid-batch: the worker exits cleanly within its shutdown timeout;
// a new worker finishes the batch; no job is lost or stored twice.
func TestSIGTERMMidBatchThenRestart(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Latency: 50 * time.Millisecond}, nil)
	const n = 300
	out, errOut, code := p.run(jsonl(n), "enqueue", "-", "--batch", "term")
	if code != 0 {
		t.Fatalf("enqueue: %d %s %s", code, out, errOut)
	}
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	w1 := p.start("worker", "--concurrency", "8")
	waitFor(t, "a third of the batch", 30*time.Second, func() bool {
		st, err := store.Batch(ctx(t), "term")
		return err == nil && st.Succeeded >= n/3
	})
	w1.stop(t, 10*time.Second)
	mid, _ := store.Batch(ctx(t), "term")
	if mid.Done() {
		t.Fatalf("batch finished before SIGTERM; the test needs a slower upstream")
	}
	p.start("worker", "--concurrency", "8")
	waitFor(t, "the batch to finish after restart", 60*time.Second, func() bool {
		st, err := store.Batch(ctx(t), "term")
		return err == nil && st.Done()
	})
	st, _ := store.Batch(ctx(t), "term")
	if st.Succeeded != n || st.Failed != 0 {
		t.Fatalf("batch %+v, want %d succeeded", st, n)
	}
	count := 0
	if err := store.Export(ctx(t), "term", func(id string, r *jobs.Result) error {
		if r == nil || r.Status != jobs.StatusSucceeded {
			return fmt.Errorf("job %s: %+v", id, r)
		}
		count++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Fatalf("%d results, want %d", count, n)
	}
	// Jobs in flight at SIGTERM either finished or went back and were run
	// once more; the upstream saw at most those extra calls.
	if extra := p.fake.Stats().Requests - n; extra < 0 || extra > 8 {
		t.Errorf("upstream saw %d calls beyond one per job; at most the 8 in flight may repeat", extra)
	}
}
