// Package jobs is the job contract shared by producers, workers and tools:
// the completion-job payload (an OpenAI chat-completions request body plus
// llmq metadata), its validation with JSON field paths, the prompt-token
// estimate used for budgeting, the stored result record, and the JSONL
// formats llmq reads and writes (OpenAI Batch input and output lines, and a
// short input form).
//
// A job's path: a producer builds a [Job] (or parses one with [ParseLine]),
// [Job.Validate] refuses anything invalid before it reaches Redis, the worker
// decodes it with [Decode], and the outcome is stored as a [Result] that
// [Result.OutputLine] turns into an OpenAI Batch output line.
package jobs
