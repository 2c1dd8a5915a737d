// Package cache holds the responses that can serve a job when no model tier
// can: a Redis cache of successful chat completions keyed by a hash of the
// normalised request (model, messages and parameters), and the configured
// static text, rendered as a chat.completion body.
//
// On the job's path they are the last tiers: primary model -> fallback
// models -> cached response (jobs that set allow_cached) -> static text
// (jobs that set allow_static, or every job when configured). The result
// record's served_by says "cache" or "static".
package cache
