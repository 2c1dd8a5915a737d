// Package upstream is llmq's HTTP client for OpenAI-compatible
// chat-completions APIs: OpenAI itself, Azure OpenAI (deployment URLs and the
// api-key header) and any server that speaks the same protocol.
//
// In a job's path it is the one place that talks to the network: the worker
// calls [Client.Chat] after the fleet budget and the breaker allowed the call,
// and hands the result — a [*Response] or an error — to the failure policy
// (package policy), which turns it into one outcome.
//
// The client never retries (asynq owns retries) and never hides a failure:
//
//   - a non-2xx answer is an [*Error] carrying status, the error body's
//     type/code/param/message (OpenAI, Azure and Anthropic shapes, or any
//     non-JSON body), the request id, the server's Retry-After hint and its
//     x-ratelimit-* headers;
//   - a network or protocol failure, or a 2xx whose body is not a usable
//     chat.completion, is a [*TransportError] whose [TransportKind] says what
//     went wrong (connect timeout, refused, DNS, reset, response-header
//     timeout, job deadline, caller cancel, malformed or truncated body).
//
// Inspect both with errors.As; never match error text. The API key comes from
// a [KeySource] (a fixed value or a file that is re-read when it changes) and
// never appears in any error, log line or formatted value.
package upstream
