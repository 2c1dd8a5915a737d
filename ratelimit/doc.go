// Package ratelimit is llmq's fleet-wide request and token budget: every
// worker process of a fleet draws from the same per-(account, model) budget
// in Redis, so together they run at the provider's RPM/TPM and never over
// it.
//
// On a job's path the worker calls [Limiter.Acquire] with the job's cost
// (one request, prompt estimate + max_tokens × n tokens, see jobs.Estimator)
// before calling upstream. Acquire blocks for short waits and returns a
// [*WaitError] for long ones so the worker can reschedule the task without
// burning an attempt. After the call the worker calls [Limiter.Reconcile]
// with its reservation (marked [Reservation.Refused] when the provider
// answered without charging it), the reported usage and the x-ratelimit-*
// headers, and on a 429 [Limiter.Cooldown] with the Retry-After instant,
// which every process then honours.
//
// # Algorithm
//
// Each budget is two continuous token buckets, requests and tokens, with
// refill = limit / 60 s and capacity = burst, or by default
// [Config.BurstWindow] (1 s) of the limit: providers may enforce a
// per-minute limit per second. A default-burst bucket grows to what the
// provider's readings prove its bucket holds (remaining + the call's own
// charge), at most a minute's limit; it serves a cost above its capacity
// (up to a minute's limit) by waiting until it is full and going into
// debt; and a fresh one starts half full (slow start) until readings
// confirm what remains.
// One Lua script (budget.lua) refills both, checks both, and takes both or
// neither in a single atomic call; when the cost does not fit it answers the
// exact wait until it would. The current time is an argument of every call
// ([Config.Now]), never read inside Redis, so tests drive time explicitly.
//
// A provider's bucket banks no refill while it is full, and calls still on
// their way to it are not in it yet, so calls overtaking each other on the
// way could find it emptier than the budget says: each bucket keeps
// rate × [Config.Transit] of its capacity back to cover that spread.
//
// # What the provider says
//
// Reconcile places each x-ratelimit-remaining-* reading among the fleet's
// charges: the script keeps running sums of what it charged, and each
// reservation carries the sums right after it. A reading, less what the
// fleet charged after its call and plus the refill since, is the
// provider's level now; it is adopted when lower than the budget's, and
// when higher (less one transit of refill) while it is at least a quarter
// of the capacity. An x-ratelimit-limit-* below the configured limit
// becomes the budget's limit ([Config.OnProviderLimit] hears of it once).
//
// # Calibration
//
// Between two readings, in the order their calls were reserved, the
// provider charged the earlier reading + its refill - the later reading;
// the fleet estimated the difference of its running sum of estimates (less
// the estimates of calls the provider refused). The ratio of the two, over
// evidence decaying with half-life [CalibrationHalfLife], once
// calibrationMinPairs pairs support it, is the budget's factor, bounded to
// [FactorMin, FactorMax], 1 within [FactorDeadBand], and only
// [FactorDownTrust] of a correction below 1 is taken. Every reservation is
// charged its cost × factor. Pairs whose earlier reading plus refill
// exceeds the provider's proven capacity are skipped (its bucket may have
// filled, wasting refill).
//
// All of one budget lives in one hash, <prefix>:budget:{<account>:<model>},
// hash-tagged so it is Redis Cluster safe; it expires after twice its fill
// time when idle (an idle budget is full anyway).
//
// # Fairness
//
// A request that has to wait in [Limiter.Acquire] records a head-of-line
// claim (its ticket and need) in the budget, when no other live claim
// exists. While the claim lives, other callers may only take what leaves the
// claimed amount in the bucket, so a large job is not starved by a stream of
// small ones. A claim is cleared when its owner is served, and expires
// [ClaimGrace] after the instant its owner was told to come back, so a
// crashed waiter blocks nobody for long. There is one claim slot per budget:
// a second large waiter claims after the first is served.
//
// # Failure
//
// When Redis fails, Acquire retries with a bounded backoff (100 ms to 1 s)
// until its context ends; it never proceeds without a reservation.
package ratelimit
