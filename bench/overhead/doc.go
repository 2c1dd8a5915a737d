// Command overhead measures what llmq's worker costs per job beyond the
// work itself: it drains the same batch through a plain asynq handler (the
// baseline: decode the payload, the same upstream call, one SET of the
// answer) and through `llmq worker` (no budget, no fallback, closed
// breaker), one process each with the same concurrency, against an instant
// in-process fake upstream and a redis-server of its own, and prints for
// each the rate (best of -runs), the CPU per job of the worker process and
// of Redis (from /proc/<pid>/stat) and the Redis commands per job (from
// INFO commandstats, the bench's own polling subtracted), the ratio of
// the two rates, and the ratio of their median CPU per job (worker +
// Redis), which other work on a shared machine moves far less than the
// rates.
//
//	make bench-overhead
//	go run ./bench/overhead -bin bin/llmq -jobs 4000 -concurrency 32 -runs 3
//	go run ./bench/overhead -bin bin/llmq -profile /tmp/prof   # + both workers' pprof of their last run
//
// The baseline runs as a subprocess of this command (-baseline-worker), and
// `llmq worker` through the shared fleet harness (llmqtest/fleet), so that
// both are measured the same way from /proc. With -profile the last run
// of each serves its profiles (llmq's worker.pprof, the baseline's
// -pprof-addr) and the bench saves a CPU and an allocation profile of its
// drain (go tool pprof -top bin/llmq DIR/cpu.pprof; the baseline's are
// DIR/plain-*.pprof); the profiler costs that run a few percent.
package main
