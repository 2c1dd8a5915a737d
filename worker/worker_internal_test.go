package worker

import (
	"testing"
	"time"
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
