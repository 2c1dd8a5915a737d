// Package breaker is llmq's circuit breaker: one per (upstream, model),
// its state in Redis so the whole fleet shares it. When one process trips it
// every process sees it open; when the open interval ends exactly one call
// of the fleet probes the upstream, and its verdict closes or reopens it.
//
// On the job's path it sits between the hold gate and the budget:
//
//	permit := breaker.Allow(model)   // closed: go; open: wait or fall back
//	upstream call, classify
//	breaker.Record(permit, Failure)  // policy.Verdict.Breaker (5xx, 529,
//	                                 // timeouts, transport); 4xx and 429
//	                                 // are the upstream answering: Success
//
// Defaults are DESIGN.md's: 5 failures in a rolling 60 s window open it,
// it stays open 30 s, then one probe. The window is rolling (a sorted set of
// failure instants), not fixed buckets that forget at their boundary.
// Time comes from Config.Now, so tests drive transitions with a fake clock.
package breaker
