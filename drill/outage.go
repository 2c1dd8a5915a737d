package drill

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
)

// outageModel is the model of the outage drill's jobs.
const outageModel = "gpt-4o-mini"

// outagePlan is the outage drill's load and timings: DESIGN.md's breaker
// timings compressed ten times (window 6 s, open 3 s; retry base 100 ms,
// cap 6 s; asynq poll 100 ms). asynq's whole-second retry clock is not
// compressed: a job delayed to the end of an open interval runs up to a
// second after it.
type outagePlan struct {
	workers, concurrency int
	rate                 float64 // jobs enqueued per second
	warmup, outage, tail time.Duration
	latency              time.Duration // fake upstream latency per call
	window, open         time.Duration // breaker
	perProcess           []bool        // modes to run
	slack                int64         // calls over the target the check allows
}

func outagePlanFor(s Size) outagePlan {
	p := outagePlan{workers: 4, concurrency: 8, rate: 20, warmup: 4 * time.Second, outage: 10 * time.Second,
		tail: 6 * time.Second, latency: 20 * time.Millisecond, window: 6 * time.Second, open: 3 * time.Second,
		perProcess: []bool{false, true}}
	if s == Short {
		// CI: the shared breaker only, and room on a loaded machine for
		// two calls admitted before the breaker opened that reach the
		// fake later: after the failure that opened it was answered
		// (so not at once with it) or after its opened_at (the opener's
		// clock when it sent the record, in whole milliseconds).
		p.warmup, p.tail, p.perProcess, p.slack = 3*time.Second, 3*time.Second, []bool{false}, 2
	}
	return p
}

// outageFigures are one mode's results.
type outageFigures struct {
	mode               string
	enqueued           int
	succeeded          int
	deadLettered, lost int
	duplicates         int
	stuck              int
	callsDuring        int64  // upstream calls that arrived during the outage
	tripped            bool   // the breaker's first opening was seen in the outage (shared mode)
	notTripped         string // why not, when it was not
	afterTrip          int    // calls that arrived after it (0 unless tripped)
	inFlight           int    // the most calls the fake answered at once before it (0 unless tripped)
	opens, failedPr    int    // closed->open and half_open->open transitions (worker logs)
	burnedTotal        int
	burnedMax          int
	jobsBurned         int
	preRate            float64
	firstSuccess       time.Duration
	fullThroughput     time.Duration
	drained            time.Duration
	openPeriods        int // open periods that fit in the outage: the target's probes
	failures           int // the breaker's consecutive-failure threshold
}

// Outage is the outage drill (make bench-outage): a fleet of `llmq
// worker` processes runs a steady stream of jobs against the fake
// upstream, which answers 503 to everything for an outage window, then
// recovers. It runs with the fleet's shared circuit breaker and (long form)
// with per-process breakers (config breaker.per_process: the same
// algorithm, each process keeping its own state: the baseline), and reports
// for each the upstream calls during the outage against the target
// (consecutive failures that open the breaker + one probe per open period
// + the calls the fake answered at once before it opened, beyond one:
// those admitted while the failure that opened it was in flight), the
// calls after it opened (one probe per open period), jobs lost and
// dead-lettered (both must be 0), attempts burned, and the time from
// recovery to the first success, to full throughput (the start of the
// first 500 ms window whose successes reach 90 % of the pre-outage rate)
// and to the backlog drained.
func Outage(ctx context.Context, o Options) (*Report, error) {
	rep := &Report{Drill: "outage: breaker under a 503 outage", Size: o.Size}
	p := outagePlanFor(o.Size)
	var all []outageFigures
	for _, per := range p.perProcess {
		f, err := outageRun(ctx, o, p, per)
		if err != nil {
			return rep, err
		}
		all = append(all, f)
		rep.Submitted += f.enqueued
		rep.Stored += f.succeeded + f.deadLettered
		rep.Lost += f.lost
		rep.Stuck += f.stuck
		rep.Duplicates += f.duplicates
		rep.check(f.lost == 0, "%s: %d jobs lost", f.mode, f.lost)
		rep.check(f.deadLettered == 0, "%s: %d jobs dead-lettered by an outage the breaker should absorb", f.mode, f.deadLettered)
	}
	sh := all[0]
	// The breaker opens at the failure that completes its streak; calls
	// admitted while that failure was in flight, before its record, go
	// upstream too: at most one fewer than the calls in flight at once
	// before it opened. After it opened, only the probes.
	concurrent := max(sh.inFlight-1, 0) // 0 unless it opened
	target := int64(sh.failures + sh.openPeriods + concurrent)
	var b strings.Builder
	fmt.Fprintf(&b, "%d worker processes × concurrency %d, %.0f jobs/s, fake latency %s; breaker window %s, open %s; steady %s, outage (all 503) %s, steady %s\n",
		p.workers, p.concurrency, p.rate, p.latency, p.window, p.open, p.warmup, p.outage, p.tail)
	writeOutageTable(&b, all)
	fmt.Fprintf(&b, "target: calls during outage <= %d failures + %d probes (one per %s open period in %s) + %d (calls in flight at once before it opened, beyond one) = %d: shared %d (%s)",
		sh.failures, sh.openPeriods, p.open, p.outage, concurrent, target, sh.callsDuring, verdict(sh.callsDuring <= target))
	if len(all) > 1 {
		fmt.Fprintf(&b, ", per-process %d", all[1].callsDuring)
	}
	if sh.tripped {
		fmt.Fprintf(&b, "\ntarget: calls after the shared breaker opened <= %d probes: %d (%s)", sh.openPeriods, sh.afterTrip, verdict(sh.afterTrip <= sh.openPeriods))
	} else {
		fmt.Fprintf(&b, "\ntarget: the shared breaker opens during the outage: %s (MISSED)", sh.notTripped)
	}
	fmt.Fprintf(&b, "\ntarget: recovery -> full throughput <= open + 1s = %s: shared %s (%s)",
		secs(p.open+time.Second), secs(sh.fullThroughput), verdict(sh.fullThroughput >= 0 && sh.fullThroughput <= p.open+time.Second))
	if len(all) > 1 && sh.callsDuring > 0 {
		pp := all[1]
		fmt.Fprintf(&b, "\nratio: per-process breakers made %.1fx the upstream calls during the outage and burned %.1fx the attempts",
			float64(pp.callsDuring)/float64(sh.callsDuring), float64(pp.burnedTotal)/math.Max(float64(sh.burnedTotal), 1))
	}
	rep.Notes = append(rep.Notes, strings.Split(b.String(), "\n")...)
	rep.check(sh.tripped, "the shared breaker did not open during the outage: %s", sh.notTripped)
	rep.check(sh.callsDuring <= target+p.slack, "the shared breaker let %d calls through during the outage, target %d (+%d)", sh.callsDuring, target, p.slack)
	rep.check(sh.afterTrip <= sh.openPeriods+int(p.slack), "%d calls reached the upstream after the shared breaker opened, target %d probes (+%d)", sh.afterTrip, sh.openPeriods, p.slack)
	return rep, nil
}

// outageRun runs one fleet through one outage.
func outageRun(ctx context.Context, o Options, p outagePlan, perProcess bool) (outageFigures, error) {
	f := outageFigures{mode: "shared", firstSuccess: -1, fullThroughput: -1, drained: -1}
	name := "outage-shared"
	if perProcess {
		f.mode, name = "per-process", "outage-per-process"
	}
	e, err := newEnv(ctx, o, setup{name: name, fake: fakeupstream.Config{Latency: p.latency}, concurrency: p.concurrency,
		retryBase: 100 * time.Millisecond, retryCap: 6 * time.Second,
		configure: func(c *config.Config) {
			c.Breaker.Window, c.Breaker.Open, c.Breaker.PerProcess = p.window, p.open, perProcess
		}})
	if err != nil {
		return f, err
	}
	defer e.close()
	f.failures = e.fleet.Settings().Breaker.Failures
	if _, err := e.startFleet(ctx, p.workers); err != nil {
		return f, err
	}

	// The sampler: successes and requests at the fake, every 50 ms.
	type sample struct {
		at       time.Time
		ok, reqs int64
		enqueued int
	}
	var (
		mu       sync.Mutex
		samples  []sample
		enqueued int
	)
	// The shared breaker's state, read as workers do: when it first opened
	// (the opener's clock when it recorded the failure that tripped it;
	// each opening lasts p.open, far longer than a sample).
	var br *breaker.Breaker
	if !perProcess {
		st := e.fleet.Settings()
		if br, err = breaker.New(e.rdb, breaker.Config{Prefix: st.Prefix, Scope: st.Upstream.Account}); err != nil {
			return f, err
		}
	}
	var (
		trippedAt  time.Time
		firstTrips int64 // the breaker's openings when one was first seen
		statusErr  error // the last failed read of the breaker
	)
	done, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			st, at := e.fake.Stats(), time.Now()
			var (
				bs   breaker.Status
				berr error
			)
			if br != nil {
				bs, berr = br.Status(ctx, outageModel)
			}
			mu.Lock()
			samples = append(samples, sample{at: at, ok: st.ByStatus["200"], reqs: st.Requests, enqueued: enqueued})
			if berr != nil {
				statusErr = berr
			} else if trippedAt.IsZero() && !bs.OpenedAt.IsZero() {
				trippedAt, firstTrips = bs.OpenedAt, bs.Trips
			}
			mu.Unlock()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	stopSampler := func() {
		select {
		case <-done:
		default:
			close(done)
		}
		<-sampled
	}
	defer stopSampler()

	// The steady load, with the outage in its middle.
	const batch = "outage"
	start := time.Now()
	outageAt, recoverAt := start.Add(p.warmup), start.Add(p.warmup+p.outage)
	end := recoverAt.Add(p.tail)
	var reqsAtOutage, reqsAtRecovery int64
	interval := time.Duration(float64(time.Second) / p.rate)
	inOutage := false
	for n := 0; ; n++ {
		due := start.Add(time.Duration(n) * interval)
		if !due.Before(end) {
			break
		}
		select {
		case <-ctx.Done():
			return f, ctx.Err()
		case <-time.After(time.Until(due)):
		}
		now := time.Now()
		if !inOutage && !now.Before(outageAt) && now.Before(recoverAt) {
			reqsAtOutage = e.fake.Stats().Requests
			if err := e.fake.SetFaults("503x1000000000"); err != nil {
				return f, err
			}
			outageAt, inOutage = time.Now(), true
			e.logf("outage: every call answered 503")
		}
		if inOutage && !now.Before(recoverAt) {
			if err := e.fake.SetFaults(""); err != nil {
				return f, err
			}
			recoverAt, inOutage = time.Now(), false
			reqsAtRecovery = e.fake.Stats().Requests
			e.logf("recovered after %d upstream calls during the outage", reqsAtRecovery-reqsAtOutage)
		}
		id := customID(n)
		body := fmt.Sprintf(`{"model":%q,"max_tokens":16,"messages":[{"role":"user","content":"drill-job:%s steady prompt"}]}`, outageModel, id)
		if _, err := e.prod.Enqueue(ctx, &jobs.Job{ID: jobs.JobID(batch, id), BatchID: batch, CustomID: id, Body: json.RawMessage(body)}); err != nil {
			return f, fmt.Errorf("enqueue: %w", err)
		}
		mu.Lock()
		enqueued++
		mu.Unlock()
	}
	f.enqueued = enqueued
	f.callsDuring = reqsAtRecovery - reqsAtOutage
	mu.Lock()
	tripAt, trips, serr := trippedAt, firstTrips, statusErr
	mu.Unlock()
	switch {
	case perProcess:
	case tripAt.IsZero() && serr != nil:
		f.notTripped = fmt.Sprintf("not seen open; reading it failed: %v", serr)
	case tripAt.IsZero() || !tripAt.Before(recoverAt):
		f.notTripped = "it did not open before the upstream recovered"
	case tripAt.Before(outageAt):
		f.notTripped = fmt.Sprintf("it opened %s before the outage began", outageAt.Sub(tripAt).Round(time.Millisecond))
	case trips > 1:
		f.notTripped = fmt.Sprintf("its first opening was missed: %d openings when first seen", trips)
	default:
		f.tripped = true
		f.inFlight = e.calls.peakInFlight(outageAt, tripAt)
		f.afterTrip = len(e.calls.arrived(tripAt, recoverAt))
	}

	left, _, err := e.waitDrained(ctx, 90*time.Second)
	if err != nil {
		return f, err
	}
	stopSampler()
	f.stuck = int(left)
	t, err := e.count(ctx, batch, f.enqueued)
	if err != nil {
		return f, err
	}
	f.succeeded, f.deadLettered, f.lost, f.duplicates = t.succeeded, t.failed, t.lost, t.dupJobs
	for n := range f.enqueued {
		r, err := e.store.Get(ctx, jobs.JobID(batch, customID(n)))
		if err != nil || r.Status != jobs.StatusSucceeded {
			continue
		}
		if b := r.Attempts - 1; b > 0 {
			f.burnedTotal += b
			f.jobsBurned++
			f.burnedMax = max(f.burnedMax, b)
		}
	}

	// Throughput: the pre-outage success rate, then how soon after
	// recovery it came back.
	mu.Lock()
	defer mu.Unlock()
	okAt := func(t time.Time) (int64, int) { // successes and enqueued at the last sample not after t
		var ok int64
		enq := 0
		for _, s := range samples {
			if s.at.After(t) {
				break
			}
			ok, enq = s.ok, s.enqueued
		}
		return ok, enq
	}
	o1, _ := okAt(outageAt.Add(-3 * time.Second))
	o2, _ := okAt(outageAt)
	f.preRate = float64(o2-o1) / 3
	okRec, enqRec := okAt(recoverAt)
	const win = 500 * time.Millisecond
	for _, s := range samples {
		if s.at.Before(recoverAt) {
			continue
		}
		if f.firstSuccess < 0 && s.ok > okRec {
			f.firstSuccess = s.at.Sub(recoverAt)
		}
		if f.fullThroughput < 0 {
			w0, _ := okAt(s.at.Add(-win))
			if float64(s.ok-w0) >= 0.9*f.preRate*win.Seconds() {
				// From the window's start, or the first success if later.
				f.fullThroughput = max(s.at.Add(-win).Sub(recoverAt), f.firstSuccess, 0)
			}
		}
		if f.drained < 0 && s.ok >= int64(enqRec) {
			f.drained = s.at.Sub(recoverAt)
		}
	}
	f.openPeriods = int(math.Ceil(p.outage.Seconds() / p.open.Seconds()))
	for _, w := range e.procs() {
		opens, failed, err := breakerTransitions(w.LogPath)
		if err != nil {
			return f, err
		}
		f.opens += opens
		f.failedPr += failed
	}
	return f, nil
}

// breakerTransitions counts a worker log's breaker openings (closed->open)
// and failed probes (half_open->open).
func breakerTransitions(path string) (opens, failedProbes int, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct{ Event, From, To string }
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Event != "breaker" {
			continue
		}
		switch {
		case ev.From == "closed" && ev.To == "open":
			opens++
		case ev.From == "half_open" && ev.To == "open":
			failedProbes++
		}
	}
	return opens, failedProbes, sc.Err()
}

// writeOutageTable writes one column per mode.
func writeOutageTable(b *strings.Builder, all []outageFigures) {
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', tabwriter.AlignRight)
	row := func(name string, v func(f outageFigures) string) {
		fmt.Fprint(tw, name+"\t")
		for _, f := range all {
			fmt.Fprint(tw, v(f)+"\t")
		}
		fmt.Fprintln(tw)
	}
	row("", func(f outageFigures) string { return f.mode })
	row("jobs enqueued", func(f outageFigures) string { return fmt.Sprint(f.enqueued) })
	row("jobs succeeded", func(f outageFigures) string { return fmt.Sprint(f.succeeded) })
	row("jobs lost", func(f outageFigures) string { return fmt.Sprint(f.lost) })
	row("jobs dead-lettered", func(f outageFigures) string { return fmt.Sprint(f.deadLettered) })
	row("upstream calls during outage", func(f outageFigures) string { return fmt.Sprint(f.callsDuring) })
	row("most calls in flight at once before it opened", func(f outageFigures) string {
		if !f.tripped {
			return "-"
		}
		return fmt.Sprint(f.inFlight)
	})
	row("calls after it first opened", func(f outageFigures) string {
		if !f.tripped {
			return "-"
		}
		return fmt.Sprint(f.afterTrip)
	})
	row("breaker openings (closed->open)", func(f outageFigures) string { return fmt.Sprint(f.opens) })
	row("failed probes (half_open->open)", func(f outageFigures) string { return fmt.Sprint(f.failedPr) })
	row("attempts burned (total)", func(f outageFigures) string { return fmt.Sprint(f.burnedTotal) })
	row("jobs that burned an attempt", func(f outageFigures) string { return fmt.Sprint(f.jobsBurned) })
	row("attempts burned per job (max)", func(f outageFigures) string { return fmt.Sprint(f.burnedMax) })
	row("attempts burned per job (mean)", func(f outageFigures) string {
		return fmt.Sprintf("%.3f", float64(f.burnedTotal)/float64(max(f.enqueued, 1)))
	})
	row("pre-outage successes/s", func(f outageFigures) string { return fmt.Sprintf("%.1f", f.preRate) })
	row("recovery -> first success", func(f outageFigures) string { return secs(f.firstSuccess) })
	row("recovery -> full throughput", func(f outageFigures) string { return secs(f.fullThroughput) })
	row("recovery -> backlog drained", func(f outageFigures) string { return secs(f.drained) })
	_ = tw.Flush()
}

func secs(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
