package policy

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/llmq/llmq/upstream"
)

// Outcome is what the worker does with a job after one upstream call.
type Outcome string

// Outcomes, as DESIGN.md names them.
const (
	// OK: save the result.
	OK Outcome = "ok"
	// Retry: let asynq retry after RetryDelay; burns an attempt.
	Retry Outcome = "retry"
	// RateLimited: not a failure. Cool the fleet down until RetryAfter and
	// reschedule without burning an attempt.
	RateLimited Outcome = "rate_limited"
	// Fallback: try the next fallback tier; with none left, apply
	// Verdict.Otherwise.
	Fallback Outcome = "fallback"
	// DeadLetter: archive the job (asynq SkipRetry) with Verdict.Reason.
	DeadLetter Outcome = "dead_letter"
	// Hold: a fault of the account, not of the job (bad key, no quota). Stop
	// calling, keep the job without burning an attempt, alert; resume when
	// fixed.
	Hold Outcome = "hold"
)

// Classes: short, stable labels for logs and metrics.
const (
	ClassOK             = "ok"
	ClassServerError    = "server_error"
	ClassOverloaded     = "overloaded"
	ClassTimeout        = "timeout"
	ClassTransport      = "transport"
	ClassMalformed      = "malformed"
	ClassRateLimit      = "rate_limit"
	ClassQuota          = "quota"
	ClassAuth           = "auth"
	ClassInvalidRequest = "invalid_request"
	ClassTooLarge       = "too_large"
	ClassContextLength  = "context_length"
	ClassContentPolicy  = "content_policy"
	ClassPermission     = "permission"
	ClassModelNotFound  = "model_not_found"
	ClassConflict       = "conflict"
	ClassCanceled       = "canceled"
	// ClassStreamBroken: a streamed answer was cut or went silent before
	// its end; part of it was generated and paid for.
	ClassStreamBroken = "stream_broken"
	ClassUnknown      = "unknown"
	// Classes the worker gives a job's final failure when no upstream answer
	// decided it.
	ClassInvalidPayload = "invalid_payload" // the task payload cannot be run
	ClassDeadline       = "deadline"        // the job's deadline passed
	ClassExhausted      = "exhausted"       // asynq's own retry count ran out
)

// Verdict is the failure policy's decision about one upstream call.
type Verdict struct {
	// Outcome is what to do.
	Outcome Outcome
	// Otherwise is what to do when Outcome is Fallback and no fallback tier
	// is left: DeadLetter for permission, model-not-found and context
	// length; Retry for overload. For every other Outcome it equals Outcome.
	Otherwise Outcome
	// Class is a short stable label for logs and metrics (the Class*
	// constants).
	Class string
	// RetryAfter is the server's hint (Retry-After, or for a rate limit the
	// x-ratelimit-reset-* of the exhausted budget), capped by
	// Policy.RetryAfterCap; 0 means none.
	RetryAfter time.Duration
	// Breaker reports whether the failure counts toward the model's circuit
	// breaker: 5xx, overload, 408, malformed answers and transport failures
	// do; 4xx, 429, holds and caller cancels do not.
	Breaker bool
	// Reason is the operator-readable cause, e.g. "upstream 400
	// invalid_request_error (param messages[0].content): <message>".
	Reason string
}

// Classify turns the result of one upstream call into a Verdict. It is the
// failure table of DESIGN.md, and the only place that reads status codes
// and error types:
//
//	answer                                                   outcome        class            breaker
//	2xx with a valid body (resp != nil, err == nil)          ok             ok
//	2xx malformed / truncated (TransportError)               retry          malformed        yes
//	401                                                      hold           auth
//	402; insufficient_quota, billing_* (type or code)        hold           quota
//	400 Anthropic "credit balance is too low" (message)      hold           quota
//	429 "Request too large" (Requested > Limit)              dead_letter    too_large
//	429 any other (rate_limit_exceeded, tokens, requests,    rate_limited   rate_limit
//	    rate_limit_error, Azure code "429")
//	4xx content_policy_violation / content_filter            dead_letter    content_policy
//	400 context_length_exceeded                              fallback|dl    context_length
//	403                                                      fallback|dl    permission
//	404                                                      fallback|dl    model_not_found
//	408                                                      retry          timeout          yes
//	409                                                      retry          conflict
//	413                                                      dead_letter    too_large
//	400, 422, any other 4xx                                  dead_letter    invalid_request
//	503, 529, type/code overloaded_error (any 5xx)           fallback|retry overloaded       yes
//	500, 502, 504, any other 5xx                             retry          server_error     yes
//	1xx, 3xx (redirects are not followed), >= 600            retry          unknown          yes
//	transport connect/header/read timeout, job deadline      retry          timeout          yes
//	transport refused, DNS, reset, other                     retry          transport        yes
//	stream cut before [DONE], or silent (stall)              retry          stream_broken    yes
//	error event inside a stream                              as the status it names (see upstream.Chat)
//	transport canceled (the caller's ctx: shutdown)          retry          canceled
//	upstream.ErrKey (no readable key)                        hold           auth
//	upstream.ErrInvalidRequest (unsendable body)             dead_letter    invalid_request
//	context.Canceled / DeadlineExceeded from elsewhere       retry          canceled/timeout
//	anything else                                            retry          unknown
//
// ("fallback|dl": fallback, Otherwise dead_letter.) Every verdict carries
// the server's Retry-After, capped by RetryAfterCap.
//
// For 401, Classify only says "auth": the worker refreshes the key from its
// source once (upstream.KeySource.Refresh) and retries at once if it
// changed; only a second 401 holds the fleet. "Job deadline passed" and
// "attempts exhausted" turn the last verdict into dead_letter in the
// worker, which counts attempts; an undecodable payload is dead-lettered
// by the worker before any call.
func (p Policy) Classify(resp *upstream.Response, err error) Verdict {
	p = p.WithDefaults()
	var v Verdict
	switch {
	case err != nil:
		v = classifyError(err)
		v.Reason = err.Error() // with whatever context the caller wrapped around it
	case resp == nil:
		v = Verdict{Outcome: Retry, Class: ClassUnknown, Reason: "upstream call returned neither a response nor an error"}
	case resp.StatusCode != 0 && (resp.StatusCode < 200 || resp.StatusCode > 299):
		// Not produced by upstream.Client; classify it like the error it is.
		e := upstream.ParseErrorBody(resp.StatusCode, resp.Body)
		e.RequestID, e.RateLimit = resp.RequestID, resp.RateLimit
		v = classifyAPI(e)
	default:
		v = Verdict{Outcome: OK, Class: ClassOK, Reason: "ok"}
	}
	if v.Otherwise == "" {
		v.Otherwise = v.Outcome
	}
	v.RetryAfter = min(max(v.RetryAfter, 0), p.RetryAfterCap)
	return v
}

func classifyError(err error) Verdict {
	var apiErr *upstream.Error
	if errors.As(err, &apiErr) {
		return classifyAPI(apiErr)
	}
	var te *upstream.TransportError
	if errors.As(err, &te) {
		return classifyTransport(te)
	}
	reason := err.Error()
	switch {
	case errors.Is(err, upstream.ErrKey):
		return Verdict{Outcome: Hold, Class: ClassAuth, Reason: reason}
	case errors.Is(err, upstream.ErrInvalidRequest):
		return Verdict{Outcome: DeadLetter, Class: ClassInvalidRequest, Reason: reason}
	case errors.Is(err, context.Canceled):
		return Verdict{Outcome: Retry, Class: ClassCanceled, Reason: reason}
	case errors.Is(err, context.DeadlineExceeded):
		return Verdict{Outcome: Retry, Class: ClassTimeout, Reason: reason}
	}
	return Verdict{Outcome: Retry, Class: ClassUnknown, Reason: reason}
}

func classifyTransport(te *upstream.TransportError) Verdict {
	v := Verdict{Outcome: Retry, Breaker: true, Reason: te.Error()}
	switch te.Kind {
	case upstream.KindCanceled:
		// The caller (worker shutdown) gave up: the job goes back, and the
		// upstream is not to blame.
		v.Class, v.Breaker = ClassCanceled, false
	case upstream.KindMalformed, upstream.KindTruncated:
		v.Class = ClassMalformed
	case upstream.KindConnectTimeout, upstream.KindHeaderTimeout, upstream.KindTimeout:
		v.Class = ClassTimeout
	case upstream.KindStreamCut, upstream.KindStreamStall:
		v.Class = ClassStreamBroken
	default: // refused, DNS, reset, other
		v.Class = ClassTransport
	}
	return v
}

// classifyAPI is the table for non-2xx answers. Order matters: account
// faults first (they apply whatever the status), then the 429 split, then
// the 4xx rows, then 5xx.
func classifyAPI(e *upstream.Error) Verdict {
	s := e.StatusCode
	typ, code := strings.ToLower(e.Type), strings.ToLower(e.Code)
	is := func(names ...string) bool {
		for _, n := range names {
			if typ == n || code == n {
				return true
			}
		}
		return false
	}
	v := func(o Outcome, class string, breaker bool) Verdict {
		return Verdict{Outcome: o, Class: class, Breaker: breaker, RetryAfter: e.RetryAfter, Reason: e.Error()}
	}
	fallback := func(otherwise Outcome, class string, breaker bool) Verdict {
		r := v(Fallback, class, breaker)
		r.Otherwise = otherwise
		return r
	}

	switch {
	case s >= 200 && s <= 299:
		// upstream.Client never makes an Error of a 2xx; if one appears,
		// the answer was unusable.
		return v(Retry, ClassMalformed, true)
	case s == 401:
		return v(Hold, ClassAuth, false)
	case s >= 400 && s <= 499 && (s == 402 || is("insufficient_quota", "billing_error", "billing_hard_limit_reached", "billing_not_active")):
		// OpenAI insufficient_quota (type and code), Anthropic
		// billing_error (402): retrying never helps, holding does.
		return v(Hold, ClassQuota, false)
	case s == 400 && creditBalanceTooLow(e.Message):
		return v(Hold, ClassQuota, false)
	case s == 429 && requestTooLarge(e.Message):
		return v(DeadLetter, ClassTooLarge, false)
	case s == 429:
		// rate_limit_exceeded, type tokens/requests, Anthropic
		// rate_limit_error, Azure code "429", or no body at all.
		r := v(RateLimited, ClassRateLimit, false)
		if r.RetryAfter <= 0 {
			r.RetryAfter = resetHint(e.RateLimit, typ)
		}
		return r
	case s >= 400 && s <= 499 && is("content_policy_violation", "content_filter"):
		// OpenAI content_policy_violation (code); Azure content_filter
		// (code, sometimes type), on 400 or 403.
		return v(DeadLetter, ClassContentPolicy, false)
	case s == 400 && is("context_length_exceeded"):
		return fallback(DeadLetter, ClassContextLength, false)
	case s == 403:
		return fallback(DeadLetter, ClassPermission, false)
	case s == 404:
		return fallback(DeadLetter, ClassModelNotFound, false)
	case s == 408:
		return v(Retry, ClassTimeout, true)
	case s == 409:
		return v(Retry, ClassConflict, false)
	case s == 413:
		return v(DeadLetter, ClassTooLarge, false)
	case s >= 400 && s <= 499:
		return v(DeadLetter, ClassInvalidRequest, false)
	case s >= 500 && s <= 599 && (s == 503 || s == 529 || is("overloaded_error")):
		return fallback(Retry, ClassOverloaded, true)
	case s >= 500 && s <= 599:
		return v(Retry, ClassServerError, true)
	}
	return v(Retry, ClassUnknown, true)
}

// resetHint picks, for a 429 without Retry-After, when the budget the
// server said is exhausted comes back: the reset of the dimension whose
// remaining count is 0 (the later one if both are), else the dimension the
// error type names ("tokens" or "requests"), else none.
func resetHint(rl upstream.RateLimit, typ string) time.Duration {
	var d time.Duration
	if rl.RemainingRequests == 0 && rl.ResetRequests > 0 {
		d = rl.ResetRequests
	}
	if rl.RemainingTokens == 0 && rl.ResetTokens > d {
		d = rl.ResetTokens
	}
	if d > 0 {
		return d
	}
	switch {
	case typ == "tokens" && rl.ResetTokens > 0:
		return rl.ResetTokens
	case typ == "requests" && rl.ResetRequests > 0:
		return rl.ResetRequests
	}
	return 0
}

// requestTooLarge recognises OpenAI's 429 for a single request bigger than
// the whole tokens-per-minute limit:
//
//	Request too large for gpt-4o in organization org-… on tokens per min
//	(TPM): Limit 30000, Requested 45000. The input or output tokens must be
//	reduced in order to run successfully.
//
// It is THE exception to "never classify on message text": the body's type
// ("tokens") and code ("rate_limit_exceeded") are exactly those of an
// ordinary rate limit, and no header or field says the request can never
// fit. Waiting cannot help, so it must not be rate_limited. The message is
// read two ways: its "Request too large" prefix, or "Limit N … Requested M"
// with M > N (an ordinary limit reads "Limit N, Used U, Requested M" with
// M <= N).
func requestTooLarge(msg string) bool {
	if strings.HasPrefix(strings.ToLower(msg), "request too large") {
		return true
	}
	limit, ok1 := numberAfter(msg, "Limit ")
	requested, ok2 := numberAfter(msg, "Requested ")
	return ok1 && ok2 && requested > limit
}

// creditBalanceTooLow recognises Anthropic's answer for an account out of
// prepaid credit:
//
//	400 {"type":"error","error":{"type":"invalid_request_error",
//	     "message":"Your credit balance is too low to access the Anthropic API.
//	     Please go to Plans & Billing to upgrade or purchase credits."}}
//
// It is the second and last exception to "never classify on message
// text", for the same reason as requestTooLarge: status and type are those
// of an ordinary invalid request (which is dead-lettered at once), and no
// code, header or other field says the account, not the job, is at fault.
// Dead-lettering would throw away every job of the batch one by one; like
// OpenAI's insufficient_quota it must hold the fleet until someone pays.
func creditBalanceTooLow(msg string) bool {
	return strings.Contains(strings.ToLower(msg), "credit balance is too low")
}

// numberAfter parses the decimal integer right after the first label in s.
func numberAfter(s, label string) (int64, bool) {
	i := strings.Index(s, label)
	if i < 0 {
		return 0, false
	}
	s = s[i+len(label):]
	j := 0
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(s[:j], 10, 64)
	return n, err == nil
}
