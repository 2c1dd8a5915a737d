package upstream

import (
	"math"
	"net/http"
	"testing"
	"time"
)

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseRateLimit(t *testing.T) {
	full := header(
		"x-ratelimit-limit-requests", "10000",
		"x-ratelimit-limit-tokens", "2000000",
		"x-ratelimit-remaining-requests", "9999",
		"x-ratelimit-remaining-tokens", "1999000",
		"x-ratelimit-reset-requests", "6ms",
		"x-ratelimit-reset-tokens", "6m0s",
	)
	got := ParseRateLimit(full)
	want := RateLimit{10000, 2000000, 9999, 1999000, 6 * time.Millisecond, 6 * time.Minute}
	if got != want {
		t.Fatalf("ParseRateLimit(full) = %+v, want %+v", got, want)
	}
	if ParseRateLimit(http.Header{}) != NoRateLimit() || NoRateLimit().Known() || !got.Known() {
		t.Fatalf("empty headers must give NoRateLimit, and Known must tell them apart")
	}

	resets := []struct {
		in   string
		want time.Duration
	}{
		{"1s", time.Second},
		{"6m0s", 6 * time.Minute},
		{"20ms", 20 * time.Millisecond},
		{"1m30.5s", 90*time.Second + 500*time.Millisecond},
		{"0s", 0},
		{"0", 0},
		{" 2 ", 2 * time.Second},
		{"1.5", 1500 * time.Millisecond},
		{"1h2m", time.Hour + 2*time.Minute},
		{"-1s", -1},
		{"-3", -1},
		{"soon", -1},
		{"NaN", -1},
		{"Inf", -1},
		{"", -1},
	}
	for _, tc := range resets {
		rl := ParseRateLimit(header("x-ratelimit-reset-tokens", tc.in, "x-ratelimit-reset-requests", tc.in))
		if rl.ResetTokens != tc.want || rl.ResetRequests != tc.want {
			t.Errorf("reset %q = %v/%v, want %v", tc.in, rl.ResetTokens, rl.ResetRequests, tc.want)
		}
	}

	counts := []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"42", 42}, {" 7 ", 7}, {"12.9", 12}, {"-5", -1}, {"many", -1}, {"1e300", -1}, {"", -1},
	}
	for _, tc := range counts {
		rl := ParseRateLimit(header("x-ratelimit-remaining-tokens", tc.in, "X-RateLimit-Limit-Requests", tc.in))
		if rl.RemainingTokens != tc.want || rl.LimitRequests != tc.want {
			t.Errorf("count %q = %d/%d, want %d", tc.in, rl.RemainingTokens, rl.LimitRequests, tc.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	date := now.Add(90 * time.Second).Format(http.TimeFormat)
	past := now.Add(-time.Hour).Format(http.TimeFormat)
	cases := []struct {
		name string
		h    http.Header
		want time.Duration
		ok   bool
	}{
		{"none", header(), 0, false},
		{"ms", header("retry-after-ms", "1500"), 1500 * time.Millisecond, true},
		{"fractional ms", header("retry-after-ms", "20.5"), 20500 * time.Microsecond, true},
		{"ms beats seconds", header("retry-after-ms", "250", "Retry-After", "2"), 250 * time.Millisecond, true},
		{"bad ms falls back to seconds", header("retry-after-ms", "soon", "Retry-After", "2"), 2 * time.Second, true},
		{"negative ms falls back", header("retry-after-ms", "-5", "Retry-After", "3"), 3 * time.Second, true},
		{"seconds", header("Retry-After", "2"), 2 * time.Second, true},
		{"zero seconds", header("Retry-After", "0"), 0, true},
		{"float seconds", header("Retry-After", "1.25"), 1250 * time.Millisecond, true},
		{"http date", header("Retry-After", date), 90 * time.Second, true},
		{"date in the past", header("Retry-After", past), 0, true},
		{"negative seconds", header("Retry-After", "-2"), 0, false},
		{"garbage", header("Retry-After", "tomorrow-ish"), 0, false},
		{"nan", header("Retry-After", "NaN"), 0, false},
		{"inf", header("retry-after-ms", "+Inf"), 0, false},
		{"huge clamps", header("Retry-After", "1e30"), time.Duration(math.MaxInt64), true},
	}
	for _, tc := range cases {
		got, ok := ParseRetryAfter(tc.h, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: ParseRetryAfter = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Add("", "2")
	f.Add("1500", "")
	f.Add("20.5", "Sat, 01 Mar 2025 12:01:30 GMT")
	f.Add("-1", "-1")
	f.Add("NaN", "Inf")
	f.Add("1e400", "99999999999999999999")
	f.Add("0x1p4", "Mon, 02 Jan 2006 15:04:05 MST")
	f.Add("garbage", "Sunday, 06-Nov-94 08:49:37 GMT")
	f.Fuzz(func(t *testing.T, ms, ra string) {
		h := http.Header{}
		if ms != "" {
			h.Set("retry-after-ms", ms)
		}
		if ra != "" {
			h.Set("Retry-After", ra)
		}
		d, ok := ParseRetryAfter(h, now)
		if d < 0 {
			t.Fatalf("negative Retry-After %v for ms=%q ra=%q", d, ms, ra)
		}
		if !ok && d != 0 {
			t.Fatalf("absent Retry-After must be 0, got %v", d)
		}
		rl := ParseRateLimit(header("x-ratelimit-reset-tokens", ms, "x-ratelimit-remaining-tokens", ra))
		if rl.ResetTokens < -1 || rl.RemainingTokens < -1 {
			t.Fatalf("ParseRateLimit below -1: %+v", rl)
		}
	})
}
