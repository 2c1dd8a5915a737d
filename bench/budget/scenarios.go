package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
)

// scenario is one provider and batch: a table of rows drained against it.
type scenario struct {
	name string
	// The provider: per-minute limits, bucket capacities (0: a minute's, or
	// quantum's), quantum, accounting.
	rpm, tpm           int64
	burstReq, burstTok int64
	quantum            time.Duration
	accounting         fakeupstream.Accounting
	// llmqBursts gives the llmq workers the provider's bursts; false leaves
	// llmq's default burst (only RPM/TPM set, as a new user would).
	llmqBursts bool
	// batch: jobs and their mix.
	jobs  int
	small bool
	// stages is the fleet: processes × concurrency, each joining at its
	// offset from the first request.
	stages []stage
	rows   []row
}

// stage is a group of worker processes that joins the fleet after at.
type stage struct {
	procs, concurrency int
	at                 time.Duration
}

func (s stage) String() string {
	if s.at == 0 {
		return fmt.Sprintf("%d×%d", s.procs, s.concurrency)
	}
	return fmt.Sprintf("+%d×%d after %s", s.procs, s.concurrency, s.at)
}

func (sc *scenario) procs() int {
	n := 0
	for _, s := range sc.stages {
		n += s.procs
	}
	return n
}

func (sc *scenario) fleet() string {
	parts := make([]string, len(sc.stages))
	for i, s := range sc.stages {
		parts[i] = s.String()
	}
	return strings.Join(parts, ", ")
}

// capacities returns the provider's bucket capacities.
func (sc *scenario) capacities() (req, tok int64) {
	capacity := func(limit, burst int64) int64 {
		switch {
		case burst > 0:
			return burst
		case sc.quantum > 0:
			return max(1, int64(float64(limit)*sc.quantum.Seconds()/60+0.999999))
		}
		return limit
	}
	return capacity(sc.rpm, sc.burstReq), capacity(sc.tpm, sc.burstTok)
}

// method is the estimate method that counts what the provider charges.
func (sc *scenario) method() jobs.Method {
	if sc.accounting == fakeupstream.AccountChars {
		return jobs.MethodChars
	}
	return jobs.MethodTokenizer
}

// scenarios returns the benchmark's tables: the per-minute rows the budget
// was first measured with (issue 4; llmq estimating like the provider, with
// its tokenizer, and with its default character estimate, which
// calibration corrects), the same against a provider that
// counts characters, per-second quantised providers with llmq's default
// burst (issue 11), and a growing, uneven fleet against a character-counting
// provider (issue 15).
func scenarios(o options) []*scenario {
	even := []stage{{procs: 4, concurrency: o.concurrency}}
	one := []stage{{procs: 1, concurrency: o.concurrency}}
	perMinute := func(name string, acc fakeupstream.Accounting, rows ...row) *scenario {
		return &scenario{name: name, rpm: o.rpm, tpm: o.tpm, burstReq: o.burstReq, burstTok: o.burstTok, accounting: acc,
			llmqBursts: true, jobs: o.jobs, stages: even, rows: rows}
	}
	quantised := func(q time.Duration) *scenario {
		return &scenario{name: fmt.Sprintf("quantised: buckets of %s of rate, llmq default burst, 4×16", q), rpm: o.rpm, tpm: o.tpm, quantum: q,
			accounting: fakeupstream.AccountChars, jobs: o.jobs, stages: []stage{{procs: 4, concurrency: 16}},
			rows: []row{{kind: "llmq"}, {kind: "split"}}}
	}
	growing := &scenario{name: "growing uneven fleet, chars provider, per-minute buckets, llmq default burst",
		rpm: 600, tpm: 24_000, accounting: fakeupstream.AccountChars, jobs: 400, small: true,
		stages: []stage{{procs: 1, concurrency: 2}, {procs: 3, concurrency: 16, at: 6 * time.Second}},
		rows:   []row{{kind: "llmq"}, {kind: "llmq", method: jobs.MethodTokenizer}, {kind: "split"}, {kind: "nosplit"}}}
	growing.rows[0].method = "" // llmq's default: chars
	all := []*scenario{
		{name: "per-minute, tokenizer provider (issue 4's rows)", rpm: o.rpm, tpm: o.tpm, burstReq: o.burstReq, burstTok: o.burstTok,
			accounting: fakeupstream.AccountTokenizer, llmqBursts: true, jobs: o.jobs,
			stages: even, rows: []row{{kind: "llmq", stages: one, method: jobs.MethodTokenizer}, {kind: "llmq", method: jobs.MethodTokenizer},
				{kind: "llmq", method: jobs.MethodChars}, {kind: "split"}, {kind: "nosplit"}}},
		perMinute("per-minute, chars provider", fakeupstream.AccountChars, row{kind: "llmq"}, row{kind: "split"}),
		quantised(time.Second),
		quantised(2 * time.Second),
		growing,
	}
	return all
}
