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
//
// Job ids. A job id is the asynq task id, unique in its queue. A batch line
// without an explicit id gets [JobID](batch id, custom_id), i.e.
// "<batch id>:<custom_id>". Batch ids use only [BatchIDAlphabet] (no ':'),
// so the first ':' of such an id ends the batch id and two different
// (batch, custom_id) pairs never name one job. An explicit id containing
// ':' must be exactly that id; any other explicit id is the caller's to keep
// unique (the producer refuses to add a job whose id another batch's job
// holds).
package jobs
