package worker

import (
	"testing"
	"time"

	"github.com/llmq/llmq/breaker"
	"github.com/llmq/llmq/policy"
)

func TestRoundUpToSecondNeverUndercuts(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		now  time.Duration // offset into the second
		d    time.Duration
		want time.Duration
	}{
		{0, time.Second, time.Second},
		{300 * time.Millisecond, 1200 * time.Millisecond, 1700 * time.Millisecond},
		{999 * time.Millisecond, 20 * time.Millisecond, 1001 * time.Millisecond},
		{500 * time.Millisecond, 0, 500 * time.Millisecond},
	} {
		now := base.Add(tc.now)
		got := roundUpToSecond(now, tc.d)
		if got != tc.want || got < tc.d || now.Add(got).Nanosecond() != 0 {
			t.Errorf("roundUpToSecond(+%v, %v) = %v, want %v", tc.now, tc.d, got, tc.want)
		}
	}
}

// Only a timed-out call's permit carries its start to the breaker (which
// then may excuse it from the failures in a row); a fast failure's does
// not, so an outage's failures all count.
func TestOnlyTimeoutsCarryTheirStart(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for class, want := range map[string]time.Time{
		policy.ClassTimeout:      start,
		policy.ClassServerError:  {},
		policy.ClassTransport:    {},
		policy.ClassStreamBroken: {},
	} {
		p := timedOutSince(breaker.Permit{Model: "m", Allowed: true}, tierCall{pv: policy.Verdict{Class: class}, started: start})
		if !p.Started.Equal(want) || p.Model != "m" || !p.Allowed {
			t.Errorf("%s: permit %+v, want Started %v and the rest kept", class, p, want)
		}
	}
}
