package drill

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Report is what one drill measured.
type Report struct {
	// Drill names the drill.
	Drill string
	// Size is the scale it ran at.
	Size Size
	// Submitted counts jobs submitted (good jobs; poison is counted in Notes).
	Submitted int
	// Stored counts submitted jobs with a stored result (succeeded or
	// dead-lettered).
	Stored int
	// Duplicates counts jobs the upstream answered 200 more than once.
	Duplicates int
	// Lost counts submitted jobs with no result and no task left in the
	// queue.
	Lost int
	// Stuck counts tasks still pending, active, scheduled or retrying at the
	// drill's deadline.
	Stuck int
	// Notes are the drill's measurements, one per line.
	Notes []string
	// Failures are the checks that did not hold; none means PASS.
	Failures []string
}

// Passed reports whether every check held.
func (r *Report) Passed() bool { return len(r.Failures) == 0 }

// Verdict is "PASS" or "FAIL".
func (r *Report) Verdict() string {
	if r.Passed() {
		return "PASS"
	}
	return "FAIL"
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *Report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// check records a failure unless ok.
func (r *Report) check(ok bool, format string, args ...any) {
	if !ok {
		r.fail(format, args...)
	}
}

// WriteTable writes the reports as the drill table, then each drill's
// notes and failures.
func WriteTable(w io.Writer, reports []*Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DRILL\tSIZE\tSUBMITTED\tSTORED\tDUPLICATES\tLOST\tSTUCK\tVERDICT")
	for _, r := range reports {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", r.Drill, r.Size, r.Submitted, r.Stored, r.Duplicates, r.Lost, r.Stuck, r.Verdict())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	for _, r := range reports {
		fmt.Fprintf(&b, "\n%s:\n", r.Drill)
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "  - %s\n", n)
		}
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "  ! FAIL: %s\n", f)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Drill is one drill: it runs with the options and reports what it
// measured; an error means it could not run at all.
type Drill struct {
	// Name is a short name for selecting the drill (e.g. "kill9").
	Name string
	// Run runs it.
	Run func(context.Context, Options) (*Report, error)
}

// All returns every drill, in the order of `make drill`.
func All() []Drill {
	return []Drill{
		{"kill9", Kill9},
		{"redis-always", RedisRestartAlways},
		{"redis-everysec", RedisRestartEverysec},
		{"sigterm", RollingRestart},
		{"poison", Poison},
		{"chaos", Chaos},
		{"load", Load},
		{"secrets", Secrets},
		{"outage", Outage},
		{"cluster-failover", ClusterFailover},
		{"sentinel-failover", SentinelFailover},
	}
}
