// Package redistopo starts real Redis topologies from the redis-server and
// redis-cli binaries, for tests, drills and benchmarks: a single server, a
// Redis Cluster (masters with replicas) and a Sentinel set (a master, its
// replica and three Sentinels). Every process listens on a free port on
// 127.0.0.1 and keeps its files in a directory the caller gives; nothing
// is shared with any other Redis on the machine.
//
// It sits beside llmq's job path, not on it: it proves that the path —
// producer, worker, budgets, breakers, holds, results — works when Redis is
// a cluster or fails over. Each topology's URL is what a fleet puts in
// LLMQ_REDIS_URL, and llmqtest reads it from LLMQ_TEST_REDIS_URL.
//
// Timeouts are short so failovers take a few seconds: a cluster node is
// failed after [DefaultNodeTimeout], a Sentinel master after
// [DefaultDownAfter].
package redistopo
