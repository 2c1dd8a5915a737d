package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
)

// Client keys of the tests' two tenants.
const (
	aliceKey = "sk-alice-test-key-0123456789"
	bobKey   = "sk-bob-test-key-0123456789ab"
)

// newServeEnv is a procEnv with two Batch API tenants (alice, bob) whose
// keys come from key files in serve.clients, as an operator writes them;
// mod changes the serve settings.
func newServeEnv(t *testing.T, fcfg fakeupstream.Config, mod func(*config.Serve)) *procEnv {
	t.Helper()
	dir := t.TempDir()
	var clients []config.ServeClient
	for _, c := range []struct{ name, key string }{{"alice", aliceKey}, {"bob", bobKey}} {
		path := filepath.Join(dir, c.name)
		if err := os.WriteFile(path, []byte(c.key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, config.ServeClient{Name: c.name, KeyFile: path})
	}
	p := newProcEnv(t, fcfg, func(c *config.Config) {
		c.Serve.Clients, c.Serve.Tick = clients, 100*time.Millisecond
		if mod != nil {
			mod(&c.Serve)
		}
	})
	t.Cleanup(func() {
		// The tenants' queues are not under the Env's own queue name.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, tenant := range []string{"alice", "bob"} {
			q := batchapi.TenantQueue(p.env.Queue, tenant)
			keys, _ := p.env.Client.Keys(ctx, "asynq:{"+q+"}*").Result()
			if len(keys) > 0 {
				p.env.Client.Del(ctx, keys...)
			}
			p.env.Client.SRem(ctx, "asynq:queues", q)
		}
	})
	return p
}

var serveAddr = regexp.MustCompile(`"addr":"([0-9.:]+)"`)

// startServe runs `llmq serve` on a free port until the test ends and
// returns its base URL.
func (p *procEnv) startServe() string {
	p.t.Helper()
	cmd := p.fleet.Command(context.Background(), "serve", "--addr", "127.0.0.1:0")
	cmd.Env = append(cmd.Env, p.vars...)
	logs := &llmqtest.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	p.t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	var addr string
	waitFor(p.t, "llmq serve to listen", 20*time.Second, func() bool {
		if m := serveAddr.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			return true
		}
		select {
		case err := <-done:
			done <- err
			p.t.Fatalf("llmq serve exited: %v: %s", err, logs.String())
		default:
		}
		return false
	})
	return "http://" + addr
}

func sdk(base, key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

func upload(t *testing.T, c openai.Client, content string) *openai.FileObject {
	t.Helper()
	f, err := c.Files.New(ctx(t), openai.FileNewParams{
		File:    openai.File(strings.NewReader(content), "input.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return f
}

func createBatch(t *testing.T, c openai.Client, fileID string) *openai.Batch {
	t.Helper()
	b, err := c.Batches.New(ctx(t), openai.BatchNewParams{
		InputFileID:      fileID,
		Endpoint:         openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h,
		Metadata:         map[string]string{"job": "nightly"},
	})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	return b
}

// poll gets the batch until it reaches a final status.
func poll(t *testing.T, c openai.Client, id string, within time.Duration) *openai.Batch {
	t.Helper()
	var b *openai.Batch
	waitFor(t, "batch "+id+" to finish", within, func() bool {
		var err error
		if b, err = c.Batches.Get(ctx(t), id); err != nil {
			t.Fatalf("get batch: %v", err)
		}
		switch b.Status {
		case openai.BatchStatusCompleted, openai.BatchStatusFailed, openai.BatchStatusExpired, openai.BatchStatusCancelled:
			return true
		}
		return false
	})
	return b
}

func download(t *testing.T, c openai.Client, id string) []byte {
	t.Helper()
	res, err := c.Files.Content(ctx(t), id)
	if err != nil {
		t.Fatalf("download %s: %v", id, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func outputLines(t *testing.T, b []byte) []jobs.OutputLine {
	t.Helper()
	var out []jobs.OutputLine
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var o jobs.OutputLine
		if err := json.Unmarshal(l, &o); err != nil {
			t.Fatalf("output line %s: %v", l, err)
		}
		out = append(out, o)
	}
	return out
}

// batchInput is n OpenAI Batch input lines.
func batchInput(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt %d"}],"max_tokens":16}}`+"\n", i, i)
	}
	return b.String()
}

func wantAPIError(t *testing.T, err error, status int) *openai.Error {
	t.Helper()
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != status {
		t.Fatalf("error %v, want an *openai.Error with status %d", err, status)
	}
	return apiErr
}

// The whole path with the official Go SDK: upload, create, poll to
// completed with a real worker, download output and error files (the same
// bytes every time), llmq results for the same batch, tenants isolated,
// wrong key refused, lists paginated, metrics counted.
func TestServeBatchWithOfficialSDK(t *testing.T) {
	p := newServeEnv(t, fakeupstream.Config{Faults: "400,400"}, nil)
	p.start("worker", "--concurrency", "4")
	base := p.startServe()
	alice, bob := sdk(base, aliceKey), sdk(base, bobKey)

	input := batchInput(30)
	f := upload(t, alice, input)
	if f.Bytes != int64(len(input)) || f.Purpose != openai.FileObjectPurposeBatch || f.Filename != "input.jsonl" || !strings.HasPrefix(f.ID, "file-") {
		t.Fatalf("file object %+v", f)
	}
	if got := download(t, alice, f.ID); string(got) != input {
		t.Fatalf("input file content differs: %d bytes, want %d", len(got), len(input))
	}
	b := createBatch(t, alice, f.ID)
	if b.Status != openai.BatchStatusValidating && b.Status != openai.BatchStatusInProgress {
		t.Fatalf("new batch status %q", b.Status)
	}
	if b.Metadata["job"] != "nightly" || b.ExpiresAt <= b.CreatedAt || b.InputFileID != f.ID {
		t.Errorf("new batch %s", b.RawJSON())
	}

	// Another tenant sees nothing of alice's, and learns nothing: 404.
	_, err := bob.Batches.Get(ctx(t), b.ID)
	wantAPIError(t, err, http.StatusNotFound)
	_, err = bob.Files.Content(ctx(t), f.ID)
	wantAPIError(t, err, http.StatusNotFound)
	_, err = bob.Batches.Cancel(ctx(t), b.ID)
	wantAPIError(t, err, http.StatusNotFound)
	if page, err := bob.Files.List(ctx(t), openai.FileListParams{}); err != nil || len(page.Data) != 0 {
		t.Errorf("bob lists %v files (err %v), want none", page, err)
	}
	// A wrong key: 401, typed.
	nobody := sdk(base, "sk-nobody-0123456789abcdef")
	_, err = nobody.Batches.List(ctx(t), openai.BatchListParams{})
	if e := wantAPIError(t, err, http.StatusUnauthorized); e.Code != "invalid_api_key" {
		t.Errorf("401 code %q", e.Code)
	}

	done := poll(t, alice, b.ID, 90*time.Second)
	rc := done.RequestCounts
	if done.Status != openai.BatchStatusCompleted || rc.Total != 30 || rc.Completed != 28 || rc.Failed != 2 {
		t.Fatalf("finished batch: status %s counts %+v", done.Status, rc)
	}
	if done.InProgressAt == 0 || done.FinalizingAt == 0 || done.CompletedAt == 0 || done.OutputFileID == "" || done.ErrorFileID == "" {
		t.Errorf("finished batch lacks timestamps or files: %s", done.RawJSON())
	}
	out := download(t, alice, done.OutputFileID)
	errs := download(t, alice, done.ErrorFileID)
	if again := download(t, alice, done.OutputFileID); !bytes.Equal(out, again) {
		t.Error("two downloads of the output file differ")
	}
	if again := download(t, alice, done.ErrorFileID); !bytes.Equal(errs, again) {
		t.Error("two downloads of the error file differ")
	}
	okLines, errLines := outputLines(t, out), outputLines(t, errs)
	if len(okLines) != 28 || len(errLines) != 2 {
		t.Fatalf("%d output lines and %d error lines, want 28 and 2", len(okLines), len(errLines))
	}
	for _, l := range okLines {
		if l.Response == nil || l.Response.StatusCode != 200 || !strings.HasPrefix(l.CustomID, "req-") || l.Error != nil {
			t.Fatalf("output line %+v", l)
		}
		var cc openai.ChatCompletion
		if err := json.Unmarshal(l.Response.Body, &cc); err != nil || len(cc.Choices) == 0 {
			t.Fatalf("output body is not a chat completion: %s", l.Response.Body)
		}
	}
	if e := errLines[0]; e.Error == nil || e.Error.Code != "invalid_type" || e.Response == nil || e.Response.StatusCode != 400 {
		t.Errorf("error line %+v", e)
	}
	// The output file is a file of alice's: listed, and bob cannot read it.
	of, err := alice.Files.Get(ctx(t), done.OutputFileID)
	if err != nil || of.Purpose != openai.FileObjectPurposeBatchOutput || of.Bytes != int64(len(out)) {
		t.Errorf("output file object %+v, %v", of, err)
	}
	_, err = bob.Files.Get(ctx(t), done.OutputFileID)
	wantAPIError(t, err, http.StatusNotFound)

	// The same batch through the CLI: llmq results --batch.
	stdout, stderr, code := p.run("", "results", "--batch", b.ID)
	if code != 0 || !strings.Contains(stderr, "28 done, 2 failed, 0 pending of 30") || strings.Count(stdout, "\n") != 30 {
		t.Errorf("llmq results --batch: code %d, stderr %s", code, stderr)
	}

	// List with pagination: three batches, pages of two, newest first.
	b2 := createBatch(t, alice, f.ID)
	b3 := createBatch(t, alice, f.ID)
	page, err := alice.Batches.List(ctx(t), openai.BatchListParams{Limit: openai.Int(2)})
	if err != nil || len(page.Data) != 2 || !page.HasMore || page.Data[0].ID != b3.ID || page.Data[1].ID != b2.ID {
		t.Fatalf("first page %+v, %v", page, err)
	}
	next, err := page.GetNextPage()
	if err != nil || next == nil || len(next.Data) != 1 || next.Data[0].ID != b.ID || next.HasMore {
		t.Fatalf("second page %+v, %v", next, err)
	}
	var all []string
	iter := alice.Batches.ListAutoPaging(ctx(t), openai.BatchListParams{Limit: openai.Int(1)})
	for iter.Next() {
		all = append(all, iter.Current().ID)
	}
	if iter.Err() != nil || len(all) != 3 {
		t.Errorf("auto-paging listed %v (%v)", all, iter.Err())
	}
	if bobs, err := bob.Batches.List(ctx(t), openai.BatchListParams{}); err != nil || len(bobs.Data) != 0 {
		t.Errorf("bob lists %d batches (%v), want none", len(bobs.Data), err)
	}
	// Cancelling a finished batch is refused.
	_, err = alice.Batches.Cancel(ctx(t), b.ID)
	wantAPIError(t, err, http.StatusConflict)

	// Delete: gone for its owner too.
	if d, err := alice.Files.Delete(ctx(t), f.ID); err != nil || !d.Deleted {
		t.Errorf("delete %+v %v", d, err)
	}
	_, err = alice.Files.Get(ctx(t), f.ID)
	wantAPIError(t, err, http.StatusNotFound)

	res, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{`llmq_api_requests_total{route="POST /v1/files",status="200"} 1`,
		`llmq_api_requests_total{route="GET /v1/batches/{id}",status="404"} 1`,
		`llmq_api_upload_bytes_total ` + fmt.Sprint(len(input))} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// An input file with invalid lines fails the batch with every problem and
// its line; nothing is enqueued. Oversized uploads get a typed 413.
func TestServeBrokenInputAndLimits(t *testing.T) {
	p := newServeEnv(t, fakeupstream.Config{}, func(s *config.Serve) { s.MaxFileBytes = 65536 })
	base := p.startServe()
	alice := sdk(base, aliceKey)
	lines := strings.Split(strings.TrimSpace(batchInput(6)), "\n")
	lines[1] = `{"custom_id":"req-1", not json`
	lines[2] = `{"custom_id":"req-2","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini"}}`
	lines[3] = strings.Replace(lines[3], "req-3", "req-0", 1)
	lines[4] = strings.Replace(lines[4], `"role":"user"`, `"role":"robot"`, 1)
	f := upload(t, alice, strings.Join(lines, "\n")+"\n")
	b := createBatch(t, alice, f.ID)
	done := poll(t, alice, b.ID, 30*time.Second)
	if done.Status != openai.BatchStatusFailed || done.FailedAt == 0 {
		t.Fatalf("batch %s, want failed", done.RawJSON())
	}
	got := map[int64]string{}
	for _, e := range done.Errors.Data {
		got[e.Line] += e.Code + ":" + e.Param + " "
	}
	want := map[int64]string{2: "invalid_json_line", 3: "messages", 4: "duplicate_custom_id", 5: "messages[0].role"}
	for line, w := range want {
		if !strings.Contains(got[line], w) {
			t.Errorf("line %d: errors %q, want %s", line, got[line], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("errors on lines %v, want lines 2-5 only: %s", got, done.Errors.RawJSON())
	}
	if n, _ := p.env.Client.Exists(ctx(t), "asynq:{"+batchapi.TenantQueue(p.env.Queue, "alice")+"}:pending").Result(); n != 0 {
		t.Error("a job of the failed batch was enqueued")
	}

	_, err := alice.Files.New(ctx(t), openai.FileNewParams{
		File: openai.File(strings.NewReader(strings.Repeat("x", 100_000)), "big.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	wantAPIError(t, err, http.StatusRequestEntityTooLarge)
	_, err = alice.Batches.New(ctx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: "/v1/embeddings", CompletionWindow: "24h"})
	wantAPIError(t, err, http.StatusBadRequest)
	_, err = alice.Batches.Get(ctx(t), "batch_nonexistent")
	wantAPIError(t, err, http.StatusNotFound)
}

// Cancel: queued jobs are removed, in-flight ones finish, the answers
// already in stay downloadable and the counts add up.
func TestServeCancel(t *testing.T) {
	p := newServeEnv(t, fakeupstream.Config{Latency: 200 * time.Millisecond}, nil)
	p.start("worker", "--concurrency", "2")
	base := p.startServe()
	alice := sdk(base, aliceKey)
	f := upload(t, alice, batchInput(60))
	b := createBatch(t, alice, f.ID)
	waitFor(t, "a few requests to complete", 60*time.Second, func() bool {
		got, err := alice.Batches.Get(ctx(t), b.ID)
		return err == nil && got.RequestCounts.Completed >= 3
	})
	c, err := alice.Batches.Cancel(ctx(t), b.ID)
	if err != nil || (c.Status != openai.BatchStatusCancelling && c.Status != openai.BatchStatusCancelled) || c.CancellingAt == 0 {
		t.Fatalf("cancel: %v %s", err, c.RawJSON())
	}
	done := poll(t, alice, b.ID, 60*time.Second)
	rc := done.RequestCounts
	if done.Status != openai.BatchStatusCancelled || done.CancelledAt == 0 || rc.Total != 60 || rc.Completed+rc.Failed != 60 || rc.Completed < 3 || rc.Completed > 40 {
		t.Fatalf("cancelled batch: %s", done.RawJSON())
	}
	okLines := outputLines(t, download(t, alice, done.OutputFileID))
	errLines := outputLines(t, download(t, alice, done.ErrorFileID))
	if int64(len(okLines)) != rc.Completed || int64(len(errLines)) != rc.Failed {
		t.Fatalf("%d output and %d error lines for counts %+v", len(okLines), len(errLines), rc)
	}
	for _, l := range errLines {
		if l.Error == nil || l.Error.Code != batchapi.CodeBatchCancelled || !strings.HasPrefix(l.CustomID, "req-") {
			t.Fatalf("error line %+v", l)
		}
	}
	q := batchapi.TenantQueue(p.env.Queue, "alice")
	for _, state := range []string{"pending", "scheduled", "retry", "active"} {
		if n, _ := p.env.Client.ZCard(ctx(t), "asynq:{"+q+"}:"+state).Result(); n != 0 {
			t.Errorf("%d tasks %s after the cancel", n, state)
		}
		if n, _ := p.env.Client.LLen(ctx(t), "asynq:{"+q+"}:"+state).Result(); n != 0 {
			t.Errorf("%d tasks %s after the cancel", n, state)
		}
	}
}

// When the completion window passes, what has not run expires with
// batch_expired error lines; what ran is in the output file.
func TestServeExpiry(t *testing.T) {
	p := newServeEnv(t, fakeupstream.Config{Latency: 300 * time.Millisecond}, func(s *config.Serve) { s.CompletionWindow = 3 * time.Second })
	p.start("worker", "--concurrency", "1")
	base := p.startServe()
	alice := sdk(base, aliceKey)
	f := upload(t, alice, batchInput(40))
	b := createBatch(t, alice, f.ID)
	done := poll(t, alice, b.ID, 60*time.Second)
	rc := done.RequestCounts
	if done.Status != openai.BatchStatusExpired || done.ExpiredAt == 0 || rc.Completed < 1 || rc.Completed+rc.Failed != 40 || rc.Failed < 10 {
		t.Fatalf("batch %s, want expired with some completed", done.RawJSON())
	}
	errLines := outputLines(t, download(t, alice, done.ErrorFileID))
	if int64(len(errLines)) != rc.Failed || errLines[0].Error == nil || errLines[0].Error.Code != batchapi.CodeBatchExpired || errLines[0].Response != nil {
		t.Fatalf("error lines: %+v", errLines[0])
	}
	if okLines := outputLines(t, download(t, alice, done.OutputFileID)); int64(len(okLines)) != rc.Completed {
		t.Fatalf("%d output lines, %d completed", len(okLines), rc.Completed)
	}
}

// With no client key configured, serve refuses to start.
func TestServeRefusesWithoutKeys(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	_, stderr, code := p.run("", "serve", "--addr", "127.0.0.1:0")
	if code == 0 || !strings.Contains(stderr, "no client key configured") || !strings.Contains(stderr, "LLMQ_SERVE_KEYS") {
		t.Fatalf("code %d stderr %s", code, stderr)
	}
	p.vars = append(p.vars, "LLMQ_SERVE_KEYS=alice:tiny-k3y")
	_, stderr, code = p.run("", "serve", "--addr", "127.0.0.1:0")
	if code == 0 || strings.Contains(stderr, "tiny-k3y") {
		t.Fatalf("a short key: code %d stderr %s (the key must not be echoed)", code, stderr)
	}
}
