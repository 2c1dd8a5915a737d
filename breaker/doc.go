// Package breaker is llmq's circuit breaker: one per (upstream, model),
// its state in Redis so the whole fleet shares it. When one process trips it
// every process sees it open; when the open interval ends exactly one call
// of the fleet probes the upstream, and its verdict closes or reopens it.
//
// On the job's path it sits between the hold gate and the budget:
//
//	permit := breaker.Allow(model)   // closed: go (and count the call); open: wait or fall back
//	upstream call, classify
//	breaker.Record(permit, Failure)  // policy.Verdict.Breaker (5xx, 529,
//	                                 // timeouts, transport); 4xx and 429
//	                                 // are the upstream answering: Success
//
// It opens on outages, not on noise. Two rules, either of which trips it:
//
//   - Failures in a row (default 5): failures with no success between
//     them, fleet-wide. A full outage opens it within 5 failed calls at any
//     traffic, from one call an hour to thousands a minute. One exception:
//     a timeout of a call that began before the model answered the same
//     process, within the last window bucket (Permit.Started), is not
//     counted in a row — hung calls timing out together while other calls
//     succeed opened the breaker in the chaos drill; a model that stops
//     answering stops excusing them a bucket (1 s) later.
//   - Failure rate (default 50 % of the calls in a rolling 60 s window, once
//     it holds at least 20): failsafe-go's WithFailureRateThreshold(50, 20,
//     time.Minute). It catches an upstream failing often but not in a row.
//
// Then it stays open 30 s, and one probe decides. The defaults come from
// measurements: the simulation in sim_test.go (real Redis and scripts, an
// injected clock, 4 processes, 50 calls/s, answers taking 0.2-3 s) and the
// drills. Background noise of 3 % and 8 % failing calls (the chaos drill's
// mix of 500s, resets and hangs) never opened it in 5 simulated minutes,
// nor in the chaos drill; 3 in a row opened it 6 times in 5 minutes at 8 %,
// 4 in a row 3 times. A full outage opens it at the 5th failed call (about
// 0.1 s at 50 calls/s); 60 % of calls failing within a fraction of a
// second. The seed's rule, 5 failures in any 60 s, is a 0.2 % failure rate
// at 50 calls/s: a 3 % background rate opened it 71 times in the chaos
// drill.
//
// Cost: Allow is one Redis round trip (it counts the call in the window,
// so the failure rate needs no record of successes), plus one a second per
// process and model to prune the window (prune.lua); Record is one for a
// failure or a probe, and for a success only when this process last saw
// failures in a row to end — none on a healthy upstream. The worker's job
// path batches the common case instead: AllowIn (the call's count, plain
// commands) with the job's other reads, SuccessIn (an HDEL) with its save.
//
// The window is counted in WindowBuckets buckets (1 s each for 60 s), one
// hash field per bucket for its calls and one for its failures: calls leave
// it a second at a time, never all at once at a boundary. Time comes
// from Config.Now, so tests drive transitions with a manual clock.
package breaker
