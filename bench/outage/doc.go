// Command outage is the outage drill (make bench-outage): a fleet of real
// `llmq worker` processes runs a steady stream of jobs against an in-process
// fake upstream that answers 503 to everything for an outage window, then
// recovers. It runs twice in one go, with the fleet's shared circuit
// breaker and with per-process breakers (config breaker.per_process: the
// same algorithm, each process keeping its own state in its own Redis
// keys: the baseline), and prints for each:
//
//   - upstream calls that arrived during the outage, against the target
//     failures + one probe per open period;
//   - jobs lost (no result, not dead-lettered) and dead-lettered: both must
//     be 0;
//   - attempts burned by the outage (per job: attempts - 1; nothing else
//     fails in the drill);
//   - time from recovery to the first success, to full throughput (the
//     start of the first 500 ms window whose successes reach 90% of the
//     pre-outage rate) and to the backlog drained, against the target
//     open interval + 1 s.
//
// Timings are DESIGN.md's compressed ten times: breaker 5 failures in 6 s,
// open 3 s; retry base 100 ms, cap 6 s; asynq poll 100 ms. asynq's
// whole-second retry clock is not compressed: a job delayed to the end of
// an open interval runs up to a second after it.
package main
