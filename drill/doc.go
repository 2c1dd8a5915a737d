// Package drill runs llmq's fault drills: real worker processes (the built
// llmq binary), a Redis server of the drill's own, and the fake upstream,
// put through the faults an operator meets at night — workers killed with
// SIGKILL mid-batch, Redis killed and restarted, rolling SIGTERM restarts,
// poison payloads, a misbehaving upstream, a large batch, and a hunt for
// the API key in everything llmq writes, and a 503 outage the breaker
// must absorb (the outage drill, also `make bench-outage`).
//
// Worker processes are started and stopped by llmqtest/fleet, the harness
// the CLI tests and benchmarks share.
//
// Every drill submits a batch, waits for the queue to drain (or a deadline),
// and then counts from the stored results and the fake upstream's own
// records: jobs submitted, results stored, duplicates (jobs the upstream
// answered 200 more than once: paid twice) and lost jobs (no result and no
// task left). A drill passes when nothing is lost, nothing is stuck, and its
// own checks hold; its Report says what was measured.
//
// Each drill is a Go test (drill_test.go; small counts, LLMQ_DRILL=long for
// the full counts) and a row of `make drill` (cmd/drill), which prints the
// table.
package drill
