package fakeupstream

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// Issue 11 §2: a quantised provider enforces a per-minute limit per second:
// with Quantum 1s, 600 RPM lets 10 requests through at once, not 600, and
// reports that bucket in its headers.
func TestQuantumBucket(t *testing.T) {
	for _, q := range []time.Duration{time.Second, 2 * time.Second} {
		clk := newClock()
		_, ts := start(t, Config{RPM: 600, TPM: 600_000, Quantum: q, Now: clk.Now})
		url := ts.URL + "/v1/chat/completions"
		capacity := int(10 * q / time.Second)
		for i := range capacity {
			c := post(t, nil, url, body("gpt-4o", "hi", map[string]any{"max_tokens": 1}))
			if c.resp.StatusCode != http.StatusOK {
				t.Fatalf("quantum %s: request %d of %d: status %d", q, i+1, capacity, c.resp.StatusCode)
			}
			if got := c.headerInt(t, "x-ratelimit-remaining-requests"); got != int64(capacity-1-i) {
				t.Fatalf("quantum %s: remaining-requests %d, want %d", q, got, capacity-1-i)
			}
			if c.header("x-ratelimit-limit-requests") != "600" {
				t.Fatalf("limit-requests %q, want the per-minute 600", c.header("x-ratelimit-limit-requests"))
			}
		}
		c := post(t, nil, url, body("gpt-4o", "hi", map[string]any{"max_tokens": 1}))
		if c.resp.StatusCode != http.StatusTooManyRequests || c.header("retry-after-ms") != "100" {
			t.Fatalf("quantum %s: request %d: status %d retry-after-ms %q, want 429 after 100ms", q, capacity+1, c.resp.StatusCode, c.header("retry-after-ms"))
		}
		clk.Advance(100 * time.Millisecond)
		if c := post(t, nil, url, body("gpt-4o", "hi", map[string]any{"max_tokens": 1})); c.resp.StatusCode != http.StatusOK {
			t.Fatalf("quantum %s: after the refill: status %d", q, c.resp.StatusCode)
		}
	}
}

// Issue 15: the chars accounting charges characters/4 per message (+4) plus
// max_tokens × n, while usage stays the tokenizer's.
func TestCharsAccounting(t *testing.T) {
	clk := newClock()
	_, ts := start(t, Config{TPM: 60_000, BurstTokens: 10_000, Accounting: AccountChars, Now: clk.Now})
	url := ts.URL + "/v1/chat/completions"
	content := strings.Repeat("abcd", 25) // 100 characters: 25 tokens
	// body() adds a system message "be brief" (8 characters: 2 tokens).
	c := post(t, nil, url, body("gpt-4o", content, map[string]any{"max_tokens": 10, "n": 2}))
	if c.resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d %s", c.resp.StatusCode, c.body)
	}
	want := int64(10_000 - (2 + 4) - (25 + 4) - 10*2)
	if got := c.headerInt(t, "x-ratelimit-remaining-tokens"); got != want {
		t.Errorf("remaining-tokens %d, want %d (chars/4 per message + 4, + max_tokens × n)", got, want)
	}
	if _, err := New(Config{Accounting: "bytes"}); err == nil {
		t.Error("an unknown accounting was accepted")
	}
}
