package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/llmq/llmq/upstream"
)

var now = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// Real bodies, as the providers send them.
const (
	completion        = `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}`
	openAIInvalid     = `{"error":{"message":"Invalid type for 'messages[0].content': expected a string, but got an integer instead.","type":"invalid_request_error","param":"messages[0].content","code":null}}`
	openAIContext     = `{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}`
	openAIPolicy      = `{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}`
	azureFilter       = `{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}`
	azureFilterType   = `{"error":{"message":"filtered","type":"content_filter","param":null,"code":null}}`
	openAIAuth        = `{"error":{"message":"Incorrect API key provided: sk-abc***xyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`
	openAIPermission  = `{"error":{"message":"Country, region, or territory not supported","type":"request_forbidden","param":null,"code":"unsupported_country_region_territory"}}`
	anthropicPerm     = `{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}`
	openAINotFound    = `{"error":{"message":"The model 'gpt-9' does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}`
	openAIRate        = `{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	openAIRateReqs    = `{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`
	openAITooLarge    = `{"error":{"message":"Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Requested 45000. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	openAIOverLimit   = `{"error":{"message":"Limit 10000, Requested 12000. Reduce the request.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	openAIQuota       = `{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`
	azure429          = `{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 2 seconds."}}`
	anthropicRate     = `{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}`
	anthropicBilling  = `{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low to access the Anthropic API."}}`
	anthropicTooLarge = `{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}`
	anthropic529      = `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`
	openAIServer      = `{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}`
	openAI503         = `{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}`
	proxyHTML         = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
)

// apiErr builds the *upstream.Error the client would return for status,
// body and headers (key, value pairs).
func apiErr(status int, body string, kv ...string) *upstream.Error {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	e := upstream.ParseErrorBody(status, []byte(body))
	e.RateLimit = upstream.ParseRateLimit(h)
	if d, ok := upstream.ParseRetryAfter(h, now); ok {
		e.RetryAfter = d
	}
	return e
}

func transport(kind upstream.TransportKind) error {
	return &upstream.TransportError{Kind: kind, Op: "await response", Err: errors.New("cause")}
}

func TestClassifyTable(t *testing.T) {
	date := now.Add(30 * time.Second).Format(http.TimeFormat)
	ok := &upstream.Response{StatusCode: 200, Body: []byte(completion)}
	type row struct {
		design     string // the DESIGN.md row it checks
		resp       *upstream.Response
		err        error
		outcome    Outcome
		otherwise  Outcome // "" means: same as outcome
		class      string
		breaker    bool
		retryAfter time.Duration
		reason     string // exact, when set
	}
	rows := []row{
		{design: "2xx with valid body", resp: ok, outcome: OK, class: ClassOK},
		{design: "2xx unparsable body", err: transport(upstream.KindMalformed), outcome: Retry, class: ClassMalformed, breaker: true},
		{design: "2xx truncated body", err: transport(upstream.KindTruncated), outcome: Retry, class: ClassMalformed, breaker: true},

		{design: "400 malformed, invalid param", err: apiErr(400, openAIInvalid), outcome: DeadLetter, class: ClassInvalidRequest,
			reason: "upstream 400 invalid_request_error (param messages[0].content): Invalid type for 'messages[0].content': expected a string, but got an integer instead."},
		{design: "413", err: apiErr(413, anthropicTooLarge), outcome: DeadLetter, class: ClassTooLarge},
		{design: "422", err: apiErr(422, `{"detail":[{"loc":["body","messages"],"msg":"field required"}]}`), outcome: DeadLetter, class: ClassInvalidRequest},
		{design: "other 4xx", err: apiErr(418, ""), outcome: DeadLetter, class: ClassInvalidRequest},

		{design: "400 context_length_exceeded", err: apiErr(400, openAIContext), outcome: Fallback, otherwise: DeadLetter, class: ClassContextLength},

		{design: "400 content policy (OpenAI)", err: apiErr(400, openAIPolicy), outcome: DeadLetter, class: ClassContentPolicy},
		{design: "400 content policy (Azure code)", err: apiErr(400, azureFilter), outcome: DeadLetter, class: ClassContentPolicy},
		{design: "403 content policy (type)", err: apiErr(403, azureFilterType), outcome: DeadLetter, class: ClassContentPolicy},

		{design: "401", err: apiErr(401, openAIAuth), outcome: Hold, class: ClassAuth},
		{design: "no readable key", err: fmt.Errorf("chat: %w", fmt.Errorf("%w: file empty", upstream.ErrKey)), outcome: Hold, class: ClassAuth},

		{design: "403 permission (OpenAI)", err: apiErr(403, openAIPermission), outcome: Fallback, otherwise: DeadLetter, class: ClassPermission},
		{design: "403 permission (Anthropic)", err: apiErr(403, anthropicPerm), outcome: Fallback, otherwise: DeadLetter, class: ClassPermission},
		{design: "404 model not found", err: apiErr(404, openAINotFound), outcome: Fallback, otherwise: DeadLetter, class: ClassModelNotFound},
		{design: "404 any body", err: apiErr(404, proxyHTML), outcome: Fallback, otherwise: DeadLetter, class: ClassModelNotFound},

		{design: "408", err: apiErr(408, ""), outcome: Retry, class: ClassTimeout, breaker: true},
		{design: "409", err: apiErr(409, `{"error":{"message":"conflict","type":"invalid_request_error"}}`), outcome: Retry, class: ClassConflict},

		{design: "429 rate_limit_exceeded, retry-after-ms beats Retry-After", err: apiErr(429, openAIRate, "retry-after-ms", "1500", "Retry-After", "2"),
			outcome: RateLimited, class: ClassRateLimit, retryAfter: 1500 * time.Millisecond},
		{design: "429 Azure code 429, Retry-After seconds", err: apiErr(429, azure429, "Retry-After", "2"), outcome: RateLimited, class: ClassRateLimit, retryAfter: 2 * time.Second},
		{design: "429 Anthropic rate_limit_error, Retry-After date", err: apiErr(429, anthropicRate, "Retry-After", date), outcome: RateLimited, class: ClassRateLimit, retryAfter: 30 * time.Second},
		{design: "429 tokens, no Retry-After: exhausted reset 20ms", err: apiErr(429, openAIRate, "x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "20ms", "x-ratelimit-reset-requests", "1s"),
			outcome: RateLimited, class: ClassRateLimit, retryAfter: 20 * time.Millisecond},
		{design: "429 tokens reset 6m0s, capped", err: apiErr(429, openAIRate, "x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "6m0s"),
			outcome: RateLimited, class: ClassRateLimit, retryAfter: DefaultRetryAfterCap},
		{design: "429 requests, reset by type", err: apiErr(429, openAIRateReqs, "x-ratelimit-reset-requests", "1s", "x-ratelimit-reset-tokens", "6m0s"),
			outcome: RateLimited, class: ClassRateLimit, retryAfter: time.Second},
		{design: "429 empty body", err: apiErr(429, ""), outcome: RateLimited, class: ClassRateLimit},

		{design: "429 insufficient_quota", err: apiErr(429, openAIQuota), outcome: Hold, class: ClassQuota},
		{design: "spend limit (Anthropic billing_error 402)", err: apiErr(402, anthropicBilling), outcome: Hold, class: ClassQuota},
		{design: "spend limit (billing_error on 400)", err: apiErr(400, anthropicBilling), outcome: Hold, class: ClassQuota},

		{design: "429 request too large for TPM", err: apiErr(429, openAITooLarge, "retry-after-ms", "100"), outcome: DeadLetter, class: ClassTooLarge, retryAfter: 100 * time.Millisecond},
		{design: "429 Limit < Requested", err: apiErr(429, openAIOverLimit), outcome: DeadLetter, class: ClassTooLarge},

		{design: "500", err: apiErr(500, openAIServer), outcome: Retry, class: ClassServerError, breaker: true},
		{design: "502", err: apiErr(502, proxyHTML), outcome: Retry, class: ClassServerError, breaker: true, reason: "upstream 502: " + proxyHTML},
		{design: "504", err: apiErr(504, ""), outcome: Retry, class: ClassServerError, breaker: true, reason: "upstream 504: Gateway Timeout"},
		{design: "other 5xx", err: apiErr(507, ""), outcome: Retry, class: ClassServerError, breaker: true},

		{design: "503 overloaded, Retry-After", err: apiErr(503, openAI503, "Retry-After", "2"), outcome: Fallback, otherwise: Retry, class: ClassOverloaded, breaker: true, retryAfter: 2 * time.Second},
		{design: "529 Anthropic overloaded_error", err: apiErr(529, anthropic529, "retry-after-ms", "1500"), outcome: Fallback, otherwise: Retry, class: ClassOverloaded, breaker: true, retryAfter: 1500 * time.Millisecond,
			reason: "upstream 529 overloaded_error: Overloaded"},
		{design: "overloaded_error on 500", err: apiErr(500, anthropic529), outcome: Fallback, otherwise: Retry, class: ClassOverloaded, breaker: true},
		{design: "503 huge Retry-After is capped", err: apiErr(503, "", "Retry-After", "86400"), outcome: Fallback, otherwise: Retry, class: ClassOverloaded, breaker: true, retryAfter: DefaultRetryAfterCap},

		{design: "connect timeout", err: transport(upstream.KindConnectTimeout), outcome: Retry, class: ClassTimeout, breaker: true},
		{design: "response header (read) timeout", err: transport(upstream.KindHeaderTimeout), outcome: Retry, class: ClassTimeout, breaker: true},
		{design: "job deadline during the call", err: transport(upstream.KindTimeout), outcome: Retry, class: ClassTimeout, breaker: true},
		{design: "connect refused", err: transport(upstream.KindConnectRefused), outcome: Retry, class: ClassTransport, breaker: true},
		{design: "DNS", err: transport(upstream.KindDNS), outcome: Retry, class: ClassTransport, breaker: true},
		{design: "reset", err: transport(upstream.KindReset), outcome: Retry, class: ClassTransport, breaker: true},
		{design: "other transport", err: transport(upstream.KindOther), outcome: Retry, class: ClassTransport, breaker: true},
		{design: "caller canceled (shutdown)", err: fmt.Errorf("job: %w", transport(upstream.KindCanceled)), outcome: Retry, class: ClassCanceled},

		{design: "redirect (not followed)", err: apiErr(307, ""), outcome: Retry, class: ClassUnknown, breaker: true},
		{design: "unsendable request", err: fmt.Errorf("%w: no model", upstream.ErrInvalidRequest), outcome: DeadLetter, class: ClassInvalidRequest},
		{design: "context canceled elsewhere", err: context.Canceled, outcome: Retry, class: ClassCanceled},
		{design: "context deadline elsewhere", err: context.DeadlineExceeded, outcome: Retry, class: ClassTimeout},
		{design: "any other error", err: errors.New("redis: connection pool exhausted"), outcome: Retry, class: ClassUnknown, reason: "redis: connection pool exhausted"},
		{design: "neither response nor error", outcome: Retry, class: ClassUnknown},
		{design: "wrapped upstream error", err: fmt.Errorf("tier gpt-4o: %w", apiErr(404, openAINotFound)), outcome: Fallback, otherwise: DeadLetter, class: ClassModelNotFound},
		{design: "Response with a non-2xx status", resp: &upstream.Response{StatusCode: 500, Body: []byte(openAIServer)}, outcome: Retry, class: ClassServerError, breaker: true},
	}
	p := DefaultPolicy()
	for _, r := range rows {
		t.Run(r.design, func(t *testing.T) {
			got := p.Classify(r.resp, r.err)
			want := Verdict{Outcome: r.outcome, Otherwise: r.otherwise, Class: r.class, Breaker: r.breaker, RetryAfter: r.retryAfter, Reason: got.Reason}
			if want.Otherwise == "" {
				want.Otherwise = r.outcome
			}
			if r.reason != "" {
				want.Reason = r.reason
			}
			if got != want {
				t.Errorf("Classify =\n %+v\nwant\n %+v", got, want)
			}
			if got.Reason == "" {
				t.Errorf("empty Reason")
			}
			if r.err != nil && r.reason == "" && got.Reason != r.err.Error() {
				t.Errorf("Reason = %q, want the error text %q", got.Reason, r.err.Error())
			}
		})
	}
}

func TestClassifyRetryAfterCap(t *testing.T) {
	e := apiErr(429, openAIRate, "Retry-After", "600")
	for _, tc := range []struct {
		cap  time.Duration
		want time.Duration
	}{{0, DefaultRetryAfterCap}, {5 * time.Second, 5 * time.Second}, {time.Hour, 10 * time.Minute}} {
		v := Policy{RetryAfterCap: tc.cap}.Classify(nil, e)
		if v.RetryAfter != tc.want {
			t.Errorf("cap %v: RetryAfter = %v, want %v", tc.cap, v.RetryAfter, tc.want)
		}
	}
}

// TestClassifyThroughClient runs the real client against tiny servers, so
// the table is checked on what upstream.Client actually returns.
func TestClassifyThroughClient(t *testing.T) {
	cases := []struct {
		status  int
		body    string
		header  [2]string
		outcome Outcome
		class   string
		after   time.Duration
	}{
		{200, completion, [2]string{}, OK, ClassOK, 0},
		{200, completion[:50], [2]string{}, Retry, ClassMalformed, 0},
		{529, anthropic529, [2]string{"retry-after-ms", "1500"}, Fallback, ClassOverloaded, 1500 * time.Millisecond},
		{429, azure429, [2]string{"Retry-After", "2"}, RateLimited, ClassRateLimit, 2 * time.Second},
		{429, openAIQuota, [2]string{}, Hold, ClassQuota, 0},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.header[0] != "" {
				w.Header().Set(tc.header[0], tc.header[1])
			}
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		}))
		c, err := upstream.New(upstream.Config{BaseURL: srv.URL, Key: upstream.StaticKey("sk-test-123456789")})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Chat(t.Context(), []byte(`{"model":"m","messages":[]}`))
		v := DefaultPolicy().Classify(resp, err)
		if v.Outcome != tc.outcome || v.Class != tc.class || v.RetryAfter != tc.after {
			t.Errorf("%d %.30s: %+v, want %s %s %v", tc.status, tc.body, v, tc.outcome, tc.class, tc.after)
		}
		c.CloseIdleConnections()
		srv.Close()
	}
}

func FuzzClassify(f *testing.F) {
	for _, b := range []string{completion, openAIInvalid, openAIContext, openAIPolicy, azureFilter, openAIAuth, openAINotFound,
		openAIRate, openAITooLarge, openAIOverLimit, openAIQuota, azure429, anthropicRate, anthropicBilling, anthropic529, proxyHTML, ""} {
		for _, s := range []int{200, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 503, 529, 302} {
			f.Add(s, []byte(b), "1500", "2", "reset")
		}
	}
	f.Add(429, []byte(openAIRate), "", "Sat, 01 Mar 2025 12:00:30 GMT", "canceled")
	f.Add(-1, []byte("\xff"), "NaN", "-1", "")
	kinds := []upstream.TransportKind{upstream.KindConnectTimeout, upstream.KindConnectRefused, upstream.KindDNS, upstream.KindReset,
		upstream.KindHeaderTimeout, upstream.KindTimeout, upstream.KindCanceled, upstream.KindMalformed, upstream.KindTruncated, upstream.KindOther}
	valid := map[Outcome]bool{OK: true, Retry: true, RateLimited: true, Fallback: true, DeadLetter: true, Hold: true}
	p := DefaultPolicy()
	check := func(t *testing.T, v Verdict) {
		t.Helper()
		if !valid[v.Outcome] || !valid[v.Otherwise] || v.Class == "" || v.Reason == "" {
			t.Fatalf("incomplete verdict %+v", v)
		}
		if v.Outcome != Fallback && v.Otherwise != v.Outcome {
			t.Fatalf("Otherwise differs from a non-fallback Outcome: %+v", v)
		}
		if v.RetryAfter < 0 || v.RetryAfter > p.RetryAfterCap {
			t.Fatalf("RetryAfter out of [0, cap]: %+v", v)
		}
	}
	f.Fuzz(func(t *testing.T, status int, body []byte, ms, ra, kind string) {
		// A 2xx with a valid body is ok, whatever the status and headers.
		resp := &upstream.Response{StatusCode: 200 + abs(status)%100, Body: []byte(completion)}
		if v := p.Classify(resp, nil); v.Outcome != OK {
			t.Fatalf("valid 2xx classified %+v", v)
		}
		// An error answer is never ok.
		e := apiErr(status, string(body), "retry-after-ms", ms, "Retry-After", ra, "x-ratelimit-reset-tokens", ra, "x-ratelimit-remaining-tokens", "0")
		v := p.Classify(nil, e)
		check(t, v)
		if v.Outcome == OK {
			t.Fatalf("status %d classified ok: %+v", status, v)
		}
		if status >= 400 && status <= 499 && status != 408 && v.Breaker {
			t.Fatalf("4xx counted toward the breaker: %d %+v", status, v)
		}
		if status >= 500 && status <= 599 && (!v.Breaker || (v.Outcome != Retry && v.Outcome != Fallback)) {
			t.Fatalf("5xx must retry (or fall back) and count toward the breaker: %d %+v", status, v)
		}
		// A transport failure is never ok, and always goes back to the queue.
		tk := kinds[abs(len(kind))%len(kinds)]
		tv := p.Classify(nil, &upstream.TransportError{Kind: upstream.TransportKind(kind), Op: "fuzz", Err: errors.New(kind)})
		check(t, tv)
		if tv.Outcome != Retry {
			t.Fatalf("transport kind %q: %+v", kind, tv)
		}
		if tv := p.Classify(nil, &upstream.TransportError{Kind: tk, Op: "fuzz", Err: errors.New("x")}); tv.Outcome != Retry || tv.Breaker == (tk == upstream.KindCanceled) {
			t.Fatalf("transport kind %s: %+v", tk, tv)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -(n + 1)
	}
	return n
}
