package drill

import (
	"testing"
	"time"
)

func TestCallLogSpans(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	l := newCallLog()
	l.spans = [][2]time.Time{
		{at(0), at(20)},    // before the range: not counted, though it overlaps the next
		{at(10), at(30)},   // in the range
		{at(30), at(50)},   // back to back with it: not at once
		{at(40), at(60)},   // at once with the one before
		{at(45), at(55)},   // three at once
		{at(100), at(120)}, // after the range
		{at(105), at(125)},
	}
	if got := l.peakInFlight(at(10), at(100)); got != 3 {
		t.Errorf("peakInFlight = %d, want 3", got)
	}
	if got := l.peakInFlight(at(10), at(31)); got != 1 {
		t.Errorf("peakInFlight of two calls back to back = %d, want 1", got)
	}
	if got := l.peakInFlight(at(0), at(11)); got != 2 {
		t.Errorf("peakInFlight of the first two = %d, want 2", got)
	}
	if got := len(l.arrived(at(10), at(100))); got != 4 {
		t.Errorf("arrived = %d spans, want 4", got)
	}
	if got := l.peakInFlight(at(200), at(300)); got != 0 {
		t.Errorf("peakInFlight of an empty range = %d, want 0", got)
	}
}
