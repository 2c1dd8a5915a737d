// Package fakeupstream is a faithful fake of OpenAI's chat-completions API
// for tests, demos, drills and benchmarks: the upstream end of a job's path.
//
// A [Server] answers POST /v1/chat/completions (and /chat/completions, and
// Azure's /openai/deployments/{deployment}/chat/completions) with realistic
// chat.completion bodies whose usage is counted with jobs.Estimator's
// tokenizer. It enforces a configured RPM and TPM the way OpenAI does
// (golang.org/x/time/rate token buckets refilled continuously, per minute or
// quantised to Config.Quantum of their rate, charged at request time with
// the prompt estimate plus max_tokens × n, the prompt counted by the
// tokenizer or, AccountChars, by characters), sends the real x-ratelimit-*
// headers on every answer, and rejects over-budget requests with OpenAI's
// 429 bodies and retry-after / retry-after-ms headers.
//
// A request with "stream": true is answered the way OpenAI streams
// (text/event-stream): a chunk per choice per step, n > 1 interleaved, the
// role delta first, then content (or refusal, or tool-call deltas: index,
// id, type and function name, then argument fragments), each with its
// logprobs when asked, a finish_reason chunk, with
// stream_options.include_usage a last chunk with "choices": [] and the
// usage, then "data: [DONE]". Both modes are written from one generated
// answer, so an assembled stream must equal the plain body (Config.StableIDs
// gives both the same id). A generation time (Config.GenerationTime,
// TokensPerSecond, or the fault generate:D) spreads a stream's chunks over
// it, while a plain answer sends its headers only once it is over, as
// OpenAI does. A think time (Config.ThinkTime or the fault think:D) is a
// reasoning model's silence before its first token: a stream's headers
// leave at once and then nothing, not even the role, until it is over,
// which is what OpenAI's Chat Completions sends while o-series and gpt-5
// models reason.
//
// Faults are injected from a SPEC (see [ParseFaults]): a sequence such as
// "503x3,200" consumed one element per request, or a random mix such as
// "random:500=5%,reset=2%". A SPEC can be the server default, scoped to one
// model, or carried per request in the X-Fake-Faults header (with its own
// cursor per header value and X-Fake-Key). The server counts what it served
// ([Server.Stats], GET /_fake/stats) so tests can assert on it.
//
// Order of a request: auth, body validation (OpenAI's 400s), then one fault
// element is consumed. Error faults (statuses other than 200, hang, reset,
// quota, ratelimit, ...) answer at once and are not charged to the budget;
// normal answers and the body faults (latency, slow, malformed, truncated)
// go through the RPM/TPM limiter and are charged when they pass. A request
// the limiter refuses still consumed its fault element.
//
// Control endpoints: GET /_fake/stats, POST /_fake/reset, POST /_fake/faults
// (body = SPEC, optional ?model=), GET /_fake/faults, GET /healthz.
//
// What it does not model: real text (answers echo the prompt; usage is
// deterministic, not a tokenizer's count of the answer), reasoning tokens in
// usage (completion_tokens_details) while a model thinks, prompt processing
// time before the first token (use Latency), audio, annotations, web
// search and the Responses API, the "obfuscation" padding of real stream
// chunks, keep-alive comments, HTTP/2, per-project limits and the daily
// limits, the rate limiter's own quantisation beyond the configured bursts,
// and how a real stream behaves when its client reads slowly.
package fakeupstream
