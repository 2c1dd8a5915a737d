// Package batchapi serves OpenAI's Batch API (/v1/files, /v1/batches) on
// top of llmq, so any backend submits batches with the official SDKs
// unchanged: `llmq serve` runs it.
//
// A batch's path: a tenant uploads a JSONL file (streamed into Redis in
// ChunkBytes pieces, never whole in memory), creates a batch on it, and
// producer.EnqueueBatch reads the file from Redis twice, a chunk at a
// time: once to validate every line (any invalid line fails the batch with
// every problem and its line, up to MaxBatchErrors; nothing runs), once to
// enqueue the jobs into the tenant's own asynq queue (TenantQueue):
// from there its jobs take the path of every llmq job — fleet budget,
// breaker, failure policy, results store. The server advances each batch
// (in_progress → finalizing → completed, cancelling → cancelled, expiry
// of the completion window) on every GET and in a background loop, under
// a Redis lock per batch, so any number of stateless replicas share one
// Redis. When every job is done it writes the output and error files
// (OpenAI Batch output JSONL) once, so every download is the same bytes.
package batchapi
