// Package policy is llmq's failure policy: the one table that turns an
// upstream call's result — a response, an *upstream.Error (status plus the
// error body's type and code), an *upstream.TransportError, or any other
// error — into one [Verdict] (ok, retry, rate_limited, fallback, dead_letter
// or hold), and the full-jitter backoff that spaces retries.
//
// In a job's path it sits right after upstream.Client.Chat: the worker asks
// [Policy.Classify] what happened and acts on the Outcome (save the result,
// let asynq retry after [Policy.RetryDelay], cool the fleet down, take the
// next fallback tier, archive the job, or put the account on hold). The
// table lives in classify.go and nowhere else; DESIGN.md's failure table is
// its specification and classify_test.go checks it row by row.
//
// Classification reads status codes and the structured type/code fields of
// error bodies, never message text — with one documented exception (OpenAI's
// "Request too large" 429, see classify.go).
package policy
