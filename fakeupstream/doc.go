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
package fakeupstream
