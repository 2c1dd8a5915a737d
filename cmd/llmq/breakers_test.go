package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
)

// `llmq status` shows each model's breaker: closed with its failure count,
// open with the end of its interval.
func TestStatusShowsBreakers(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, func(c *config.Config) {
		c.Breaker.Failures, c.Breaker.Window, c.Breaker.Open = 3, time.Minute, 10*time.Minute
	})
	out, errOut, code := p.run("", "status")
	if code != 0 || !strings.Contains(out, "breakers: all closed") {
		t.Fatalf("status before any failure: %d %s %s", code, out, errOut)
	}
	b, err := breaker.New(p.env.Client, breaker.Config{Prefix: p.env.Prefix, Failures: 3, Open: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	fail := func(model string, n int) {
		for i := 0; i < n; i++ {
			pm, err := b.Allow(ctx(t), model)
			if err == nil {
				err = b.Record(ctx(t), pm, breaker.Failure)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	fail("gpt-4o", 3)
	fail("gpt-4o-mini", 1)
	out, errOut, code = p.run("", "status")
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	for _, re := range []string{`(?m)^gpt-4o\s+open\s+-\s+-\s+\S+Z \(in (10m0s|9m5\ds)\)`, `(?m)^gpt-4o-mini\s+closed\s+1 of 3\s`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("status output does not match %s:\n%s", re, out)
		}
	}
}
