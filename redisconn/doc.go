// Package redisconn turns llmq's Redis URL (redis_url, LLMQ_REDIS_URL) into
// the connections every part of llmq uses: asynq's RedisConnOpt for the
// queue (producer, worker, inspector) and a go-redis UniversalClient for
// llmq's own keys (budgets, breakers, holds, results, cache).
//
// It sits at the very start of a job's path: before a job is enqueued or a
// worker starts, [Parse] reads the URL once and every client is built from
// the one [Conn] it returns, so the queue and llmq's keys always live in the
// same Redis, whether that is one server, a Sentinel-managed master or a
// Redis Cluster.
//
// # URL forms
//
//	redis://[[user]:password@]HOST[:PORT][/DB][?options]    one server
//	rediss://…                                              one server over TLS
//	unix://[[user]:password@]/path/to/redis.sock[?db=N]      one server on a Unix socket
//	redis+sentinel://[[user]:password@]HOST:PORT[?addr=HOST:PORT&…]&master_name=NAME[&db=N]
//	redis+cluster://[[user]:password@]HOST:PORT[?addr=HOST:PORT&…]
//
// In redis+sentinel URLs HOST:PORT and each addr are Sentinels; the
// password is the master's (and its replicas'); sentinel_password (a query
// option) authenticates to Sentinels that require one. In redis+cluster
// URLs they are seed nodes: the client learns the rest of the cluster from
// them. rediss+sentinel and rediss+cluster use TLS. Options common to all
// forms: dial_timeout, read_timeout, write_timeout (Go durations, or
// seconds) and pool_size.
//
// Errors are [*Error] values naming the part of the URL at fault; neither
// errors nor [Conn.String] or [Conn.Redacted] ever contain a password.
package redisconn
