package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/results"
)

// runWithin runs llmq like run, but kills it after d: a command that hangs
// fails the test instead of stalling it.
func (p *procEnv) runWithin(d time.Duration, stdin string, args ...string) (string, string, int) {
	p.t.Helper()
	c, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := p.fleet.Command(c, args...)
	cmd.Env = append(cmd.Env, p.vars...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if c.Err() != nil {
		p.t.Fatalf("llmq %v did not finish within %v; stderr: %s", args, d, errb.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		p.t.Fatalf("run llmq %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func line(customID, extra string) string {
	return fmt.Sprintf(`{"custom_id":%q,"model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %s"}],"max_tokens":8%s}`+"\n", customID, customID, extra)
}

// Issue 10 item 1: (batch "hx", custom_id "a:b") and (batch "hx:a",
// custom_id "b") were one job: the second batch's prompt was never sent and
// --wait hung. Batch ids can no longer hold ':'; an explicit id taken by
// another batch is refused and left out of the batch, so --wait ends.
func TestJobIDsNeverCollideAcrossBatches(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	p.start("worker", "--concurrency", "4")
	out, errOut, code := p.runWithin(time.Minute, line("a:b", ""), "enqueue", "-", "--batch", "hx", "--wait")
	if code != 0 || strings.TrimSpace(out) != "hx" {
		t.Fatalf("batch hx: code %d stdout %q stderr %s", code, out, errOut)
	}
	_, errOut, code = p.runWithin(time.Minute, line("b", ""), "enqueue", "-", "--batch", "hx:a", "--wait")
	if code == 0 || !strings.Contains(errOut, `batch_id: "hx:a": character ':' not allowed`) {
		t.Fatalf("batch hx:a: code %d stderr %s; want it refused for its ':'", code, errOut)
	}
	// An explicit id holding ':' must be the <batch>:<custom_id> id.
	_, errOut, code = p.runWithin(time.Minute, line("b", `,"id":"hx:a:b"`), "enqueue", "-", "--batch", "hy")
	if code == 0 || !strings.Contains(errOut, `line 1: invalid job: id: "hx:a:b" contains ":"`) {
		t.Fatalf("explicit id with ':': code %d stderr %s; want it refused", code, errOut)
	}
	// Explicit ids are global: the second batch cannot take the first's.
	out, errOut, code = p.runWithin(time.Minute, line("x", `,"id":"shared"`), "enqueue", "-", "--batch", "ea", "--wait")
	if code != 0 || strings.TrimSpace(out) != "ea" {
		t.Fatalf("batch ea: code %d stdout %q stderr %s", code, out, errOut)
	}
	out, errOut, code = p.runWithin(time.Minute, line("y", `,"id":"shared"`)+line("z", ""), "enqueue", "-", "--batch", "eb", "--wait")
	if code == 0 || strings.TrimSpace(out) != "eb" || !strings.Contains(errOut, `line 1: id "shared" belongs to batch "ea"`) {
		t.Fatalf("batch eb: code %d stdout %q stderr %s; want the conflict reported with the batch id", code, out, errOut)
	}
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	waitFor(t, "batch eb's own job", 30*time.Second, func() bool {
		st, err := store.Batch(ctx(t), "eb")
		return err == nil && st.Done()
	})
	if st, _ := store.Batch(ctx(t), "eb"); st.Total != 1 || st.Succeeded != 1 {
		t.Fatalf("batch eb %+v: want only its own job (z) counted", st)
	}
	// --wait on the batch now ends instead of waiting on batch ea's job.
	if _, errOut, code = p.runWithin(time.Minute, line("z", ""), "enqueue", "-", "--batch", "eb", "--wait"); code != 0 {
		t.Fatalf("re-enqueue eb --wait: code %d %s", code, errOut)
	}
	exp, errOut, code := p.runWithin(time.Minute, "", "results", "--batch", "eb")
	if code != 0 || strings.Count(exp, "\n") != 1 || !strings.Contains(exp, `"custom_id":"z"`) {
		t.Fatalf("results eb: code %d %q %s", code, exp, errOut)
	}
}

// Issue 10 item 2: a repeated explicit id was silently dropped.
func TestDuplicateExplicitIDIsRefused(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	in := line("a", `,"id":"dup"`) + line("b", "") + line("c", `,"id":"dup"`)
	_, errOut, code := p.runWithin(time.Minute, in, "enqueue", "-", "--batch", "d")
	if code == 0 || !strings.Contains(errOut, `line 3: invalid job: id: id "dup" repeats line 1`) {
		t.Fatalf("code %d stderr %s; want the duplicate id refused with both lines", code, errOut)
	}
	if _, errOut, code = p.run("", "results", "--batch", "d"); code == 0 || !strings.Contains(errOut, "unknown batch id") {
		t.Fatalf("a refused batch must not exist: code %d %s", code, errOut)
	}
}

// Issue 10 items 9 and 11: max_attempts near 2^31 wrapped in asynq's retry
// counter; a fallback list had no bound.
func TestAttemptsAndFallbacksAreBounded(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	_, errOut, code := p.runWithin(time.Minute, line("a", `,"max_attempts":2147483640`), "enqueue", "-", "--batch", "m1")
	if code == 0 || !strings.Contains(errOut, "line 1: invalid job: max_attempts: must be at most 100, got 2147483640") {
		t.Fatalf("max_attempts: code %d stderr %s", code, errOut)
	}
	_, errOut, code = p.runWithin(time.Minute, line("a", ""), "enqueue", "-", "--batch", "m2", "--attempts", "101")
	if code == 0 || !strings.Contains(errOut, "max_attempts: must be at most 100, got 101") {
		t.Fatalf("--attempts 101: code %d stderr %s", code, errOut)
	}
	fb := `,"fallback":["m1","m2","m3","m4","m5","m6","m7","m8","m9"]`
	_, errOut, code = p.runWithin(time.Minute, line("a", fb), "enqueue", "-", "--batch", "m3")
	if code == 0 || !strings.Contains(errOut, "line 1: invalid job: fallback: must list at most 8 models, got 9") {
		t.Fatalf("fallback: code %d stderr %s", code, errOut)
	}
	if _, errOut, code = p.runWithin(time.Minute, line("a", `,"max_attempts":100`+strings.Replace(fb, `,"m9"`, "", 1)), "enqueue", "-", "--batch", "m4"); code != 0 {
		t.Fatalf("the bounds themselves must pass: code %d %s", code, errOut)
	}
}

// Issue 10 item 10: -o F --errors F wrote a corrupt file and exited 0.
func TestResultsRefusesOneFileForBothOutputs(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Faults: "400"}, nil)
	p.start("worker", "--concurrency", "2")
	if _, errOut, code := p.runWithin(time.Minute, jsonl(5), "enqueue", "-", "--batch", "same", "--wait"); code != exitJobsFailed {
		t.Fatalf("enqueue: code %d %s; want one job dead-lettered", code, errOut)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "out.jsonl")
	if err := os.WriteFile(f, []byte("keep\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.jsonl")
	if err := os.Symlink(f, link); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(dir, "hard.jsonl")
	if err := os.Link(f, hard); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "new.jsonl")
	dangling := filepath.Join(dir, "dangling.jsonl")
	if err := os.Symlink(fresh, dangling); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{f, f}, {f, filepath.Join(dir, ".", "out.jsonl")}, {f, link}, {link, hard}, {fresh, dangling}} {
		_, errOut, code := p.runWithin(time.Minute, "", "results", "--batch", "same", "-o", pair[0], "--errors", pair[1])
		if code == 0 || !strings.Contains(errOut, "-o and --errors name the same file") {
			t.Errorf("-o %s --errors %s: code %d stderr %s; want a refusal", pair[0], pair[1], code, errOut)
		}
		if b, _ := os.ReadFile(f); string(b) != "keep\n" {
			t.Fatalf("-o %s --errors %s: the existing file was changed to %q", pair[0], pair[1], b)
		}
	}
	other := filepath.Join(dir, "errors.jsonl")
	if _, errOut, code := p.runWithin(time.Minute, "", "results", "--batch", "same", "-o", f, "--errors", other); code != 0 {
		t.Fatalf("distinct files: code %d %s", code, errOut)
	}
	if oks, bads := readLines(t, f), readLines(t, other); len(oks) != 4 || len(bads) != 1 {
		t.Fatalf("%d results, %d errors; want 4 and 1", len(oks), len(bads))
	}
}
