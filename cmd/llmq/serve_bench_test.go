package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
)

// Settings of the Batch API benchmark (make bench-batchapi).
const (
	benchRPM          = 30_000 // fake upstream limit and fleet budget, requests per minute
	benchRequests     = 10_000 // requests in the timed batch
	benchUploadBytes  = 200 << 20
	benchFairAlice    = 4_000 // fair share: alice's backlog
	benchFairBob      = 1_000 // bob's, submitted once alice's runs
	benchWorkers      = 2
	benchConcurrency  = "64"
	benchFakeLatency  = 20 * time.Millisecond
	benchPollInterval = 200 * time.Millisecond
	benchFairPoll     = 50 * time.Millisecond
)

// TestBenchBatchAPI measures, with the official Go SDK against `llmq serve`
// and real workers: the serve process's peak RSS while a 200 MB file is
// uploaded (streamed), the drain time of a 10,000-request batch against the
// budget bound N ÷ RPM, and the share of the budget two tenants with
// backlogs at the same time get. It runs only with LLMQ_BENCH_BATCHAPI=1.
func TestBenchBatchAPI(t *testing.T) {
	if os.Getenv("LLMQ_BENCH_BATCHAPI") == "" {
		t.Skip("a benchmark: run with LLMQ_BENCH_BATCHAPI=1 (make bench-batchapi)")
	}
	p := newServeEnv(t, fakeupstream.Config{RPM: benchRPM, Latency: benchFakeLatency}, func(c *config.Config) {
		c.Budgets = map[string]config.Budget{"default": {RPM: benchRPM}}
		c.Serve.Tick = 250 * time.Millisecond
	})
	for range benchWorkers {
		p.start("worker", "--concurrency", benchConcurrency)
	}
	pid, base := p.startServeProc()
	alice, bob := sdk(base, aliceKey), sdk(base, bobKey)

	// 1. Upload RSS: a 200 MB multipart body, streamed from a pipe.
	before := peakRSS(t, pid)
	t0 := time.Now()
	id := streamUpload(t, base, aliceKey, benchUploadBytes)
	took := time.Since(t0)
	after := peakRSS(t, pid)
	if _, err := alice.Files.Delete(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	t.Logf("upload %d MB: %.1fs; serve peak RSS %d MiB before, %d MiB after (VmHWM)", benchUploadBytes>>20, took.Seconds(), before>>10, after>>10)

	// 2. A 10,000-request batch at the budget.
	f := upload(t, alice, batchInput(benchRequests))
	t0 = time.Now()
	b := createBatch(t, alice, f.ID)
	var inProgress time.Duration
	waitFor(t, "the batch to complete", 15*time.Minute, func() bool {
		time.Sleep(benchPollInterval)
		got, err := alice.Batches.Get(ctx(t), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if inProgress == 0 && got.Status != openai.BatchStatusValidating {
			inProgress = time.Since(t0)
		}
		b = got
		return got.Status == openai.BatchStatusCompleted
	})
	drain := time.Since(t0)
	st := p.fake.Stats()
	bound := time.Duration(float64(benchRequests) / benchRPM * float64(time.Minute))
	t.Logf("batch of %d at %d RPM: validated and enqueued in %.1fs, completed in %.1fs (counts %d/%d/%d); N/RPM %.1fs, drain/(N/RPM) %.2f (a floor only when the provider's bucket holds less than N); the fake answered %d requests, %d throttled (429 of its RPM limit)",
		benchRequests, benchRPM, inProgress.Seconds(), drain.Seconds(), b.RequestCounts.Total, b.RequestCounts.Completed, b.RequestCounts.Failed,
		bound.Seconds(), drain.Seconds()/bound.Seconds(), st.Requests, st.Throttled)

	// 3. Fair share: alice's backlog first, bob's once alice's runs.
	fa := upload(t, alice, batchInput(benchFairAlice))
	fb := upload(t, bob, batchInput(benchFairBob))
	ba := createBatch(t, alice, fa.ID)
	waitFor(t, "alice's batch to run", time.Minute, func() bool {
		got, err := alice.Batches.Get(ctx(t), ba.ID)
		return err == nil && got.RequestCounts.Completed > 0
	})
	bb := createBatch(t, bob, fb.ID)
	// Snapshots (alice's completed, bob's completed): when bob's batch is
	// in progress, when it has 20 % and 80 % done, when it completed. The
	// whole window's share includes its edges: alice's requests already in
	// the workers' slots when bob's arrive, and alice's served while bob's
	// last ones finish and the batch is finalized. The 20–80 % window is
	// the steady state, where the queues' weights alone decide.
	type snap struct{ a, b int64 }
	var first, mid0, mid1, last snap
	started := false
	var tStart, tMid0, tMid1 time.Time
	waitFor(t, "bob's batch to complete", 15*time.Minute, func() bool {
		time.Sleep(benchFairPoll)
		ga, err := alice.Batches.Get(ctx(t), ba.ID)
		if err != nil {
			t.Fatal(err)
		}
		gb, err := bob.Batches.Get(ctx(t), bb.ID)
		if err != nil {
			t.Fatal(err)
		}
		now := snap{ga.RequestCounts.Completed, gb.RequestCounts.Completed}
		if !started && gb.Status == openai.BatchStatusInProgress {
			started, tStart, first = true, time.Now(), now
		}
		if tMid0.IsZero() && now.b >= benchFairBob/5 {
			tMid0, mid0 = time.Now(), now
		}
		if tMid1.IsZero() && now.b >= benchFairBob*4/5 {
			tMid1, mid1 = time.Now(), now
		}
		last = now
		return gb.Status == openai.BatchStatusCompleted
	})
	share := func(from, to snap) (int64, int64, float64) {
		da, db := to.a-from.a, to.b-from.b
		return da, db, float64(db) / float64(max(1, da+db))
	}
	da, db, whole := share(first, last)
	ma, mb, steady := share(mid0, mid1)
	t.Logf("fair share (equal weights: fair 0.50; one first-come-first-served queue 0.00): while both had backlogs (%.1fs) alice got %d requests, bob %d: bob's share %.2f; "+
		"in the steady state (bob's 20-80 %%, %.1fs) alice %d, bob %d: bob's share %.2f",
		time.Since(tStart).Seconds(), da, db, whole, tMid1.Sub(tMid0).Seconds(), ma, mb, steady)
	poll(t, alice, ba.ID, 15*time.Minute)
}

// streamUpload uploads n bytes of JSONL-looking text as a multipart body
// written through a pipe, so neither side holds the file.
func streamUpload(t *testing.T, base, key string, n int) string {
	t.Helper()
	line := []byte(strings.Repeat("x", 1023) + "\n")
	id, size := streamLines(t, base, key, n/len(line), func(w io.Writer, _ int) error {
		_, err := w.Write(line)
		return err
	})
	if want := int64(n / len(line) * len(line)); size != want {
		t.Fatalf("upload: %d bytes stored, want %d", size, want)
	}
	return id
}

// peakRSS returns a process's peak resident set (VmHWM) in KiB.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// Settings of the batch-creation benchmark (make bench-batchapi).
const (
	benchCreateRequests  = 50_000 // DefaultMaxRequests
	benchCreateLineBytes = 4_100  // so the file is near the 200 MB limit
	benchInvalidLines    = 200_000
)

// TestBenchBatchAPICreate measures creating a batch from the largest input
// a tenant may send (50,000 requests, ~195 MiB): the serve process's peak
// RSS while the file is uploaded and while the batch is validated and
// enqueued, and the time from create to in_progress; then the same for an
// input of invalid lines only (200,000 lines "{}"), whose problems must not
// grow serve's memory or the batch record with the file. No worker runs,
// so the jobs stay queued (the test's end removes them). It runs only with
// LLMQ_BENCH_BATCHAPI=1.
func TestBenchBatchAPICreate(t *testing.T) {
	if os.Getenv("LLMQ_BENCH_BATCHAPI") == "" {
		t.Skip("a benchmark: run with LLMQ_BENCH_BATCHAPI=1 (make bench-batchapi)")
	}
	p := newServeEnv(t, fakeupstream.Config{}, func(c *config.Config) { c.Serve.Tick = 250 * time.Millisecond })
	pid, base := p.startServeProc()
	alice := sdk(base, aliceKey)

	idle := peakRSS(t, pid)
	resetPeakRSS(t, pid)
	t0 := time.Now()
	id, size := streamLines(t, base, aliceKey, benchCreateRequests, func(w io.Writer, i int) error {
		_, err := fmt.Fprintf(w, `{"custom_id":"req-%05d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}],"max_tokens":16}}`+"\n",
			i, strings.Repeat("x", benchCreateLineBytes-145))
		return err
	})
	upTook := time.Since(t0)
	upPeak := peakRSS(t, pid)
	resetPeakRSS(t, pid)
	cpu0 := cpuTime(t, pid)
	t0 = time.Now()
	b := createBatch(t, alice, id)
	waitFor(t, "the batch to be enqueued", 10*time.Minute, func() bool {
		got, err := alice.Batches.Get(ctx(t), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		b = got
		return got.Status != openai.BatchStatusValidating
	})
	createTook := time.Since(t0)
	createCPU := cpuTime(t, pid) - cpu0
	createPeak := peakRSS(t, pid)
	if b.Status != openai.BatchStatusInProgress || b.RequestCounts.Total != benchCreateRequests {
		t.Fatalf("batch %s", b.RawJSON())
	}
	t.Logf("create from %d requests (%.1f MiB): upload %.1fs, serve peak RSS %d MiB (idle %d MiB); validated and enqueued in %.1fs (serve CPU %.1fs), serve peak RSS %d MiB",
		benchCreateRequests, float64(size)/(1<<20), upTook.Seconds(), upPeak>>10, idle>>10, createTook.Seconds(), createCPU.Seconds(), createPeak>>10)

	// Invalid lines only.
	id, size = streamLines(t, base, aliceKey, benchInvalidLines, func(w io.Writer, _ int) error {
		_, err := io.WriteString(w, "{}\n")
		return err
	})
	resetPeakRSS(t, pid)
	t0 = time.Now()
	b = createBatch(t, alice, id)
	waitFor(t, "the batch to fail", 10*time.Minute, func() bool {
		got, err := alice.Batches.Get(ctx(t), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		b = got
		return got.Status != openai.BatchStatusValidating
	})
	failTook := time.Since(t0)
	failPeak := peakRSS(t, pid)
	record, err := p.env.Client.StrLen(ctx(t), p.env.Prefix+":api:batch:{"+b.ID+"}").Result()
	if err != nil || b.Status != openai.BatchStatusFailed {
		t.Fatalf("batch %s, record %d bytes (%v)", b.Status, record, err)
	}
	t.Logf("create from %d invalid lines (%.1f MiB): failed in %.1fs with %d errors listed, batch record %d KiB; serve peak RSS %d MiB",
		benchInvalidLines, float64(size)/(1<<20), failTook.Seconds(), len(b.Errors.Data), record>>10, failPeak>>10)
}

// streamLines uploads n lines written by line as a multipart body through
// a pipe, so neither side holds the file, and returns the file id and its
// size.
func streamLines(t *testing.T, base, key string, n int, line func(w io.Writer, i int) error) (string, int64) {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		fw, err := mw.CreateFormFile("file", "big.jsonl")
		if err == nil {
			bw := bufio.NewWriterSize(fw, 1<<16)
			for i := 0; i < n && err == nil; i++ {
				err = line(bw, i)
			}
			if err == nil {
				err = bw.Flush()
			}
		}
		if err == nil {
			err = mw.WriteField("purpose", "batch")
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/files", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var f openai.FileObject
	if res.StatusCode != http.StatusOK || f.UnmarshalJSON(body) != nil {
		t.Fatalf("upload: %d %s", res.StatusCode, body)
	}
	return f.ID, f.Bytes
}

// cpuTime returns the CPU time (user and system) a process has used.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command (in parentheses, which may hold spaces):
	// utime and stime are the 12th and 13th, in clock ticks (USER_HZ, 100
	// on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %s", pid, b)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// resetPeakRSS resets a process's peak resident set (VmHWM) to its
// current one, so the next peakRSS covers what happens from now on.
func resetPeakRSS(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("reset peak RSS: %v", err)
	}
}
