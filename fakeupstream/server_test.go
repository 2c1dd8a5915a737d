package fakeupstream

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/jobs"
)

func decodeCompletion(t *testing.T, b []byte) completion {
	t.Helper()
	var c completion
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("decode completion %s: %v", b, err)
	}
	return c
}

func TestCompletionUsageMatchesEstimator(t *testing.T) {
	s, ts := start(t, Config{DefaultCompletion: 3})
	prompt := "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty twentyone twentytwo and more words here ok"
	cases := []struct {
		name      string
		reqBody   string
		perChoice int
		n         int
	}{
		{"max_tokens and n", body("gpt-4o", prompt, map[string]any{"max_tokens": 50, "n": 2}), 5 + len(strings.Fields(prompt))%20, 2},
		{"limit clips", body("gpt-4o-mini", prompt, map[string]any{"max_completion_tokens": 4}), 4, 1},
		{"default completion", body("llama-3", "hi", nil), 3, 1},
	}
	est := jobs.NewEstimator(3, jobs.WithMethod(jobs.MethodTokenizer))
	var wantPrompt, wantCompletion int64
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := post(t, nil, ts.URL+"/v1/chat/completions", tc.reqBody)
			if c.resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", c.resp.StatusCode, c.body)
			}
			var req jobs.Request
			if err := json.Unmarshal([]byte(tc.reqBody), &req); err != nil {
				t.Fatal(err)
			}
			got := decodeCompletion(t, c.body)
			if want := est.PromptTokens(&req); got.Usage.PromptTokens != want {
				t.Errorf("prompt_tokens = %d, estimator says %d", got.Usage.PromptTokens, want)
			}
			if want := tc.perChoice * tc.n; got.Usage.CompletionTokens != want {
				t.Errorf("completion_tokens = %d, want %d", got.Usage.CompletionTokens, want)
			}
			if got.Usage.TotalTokens != got.Usage.PromptTokens+got.Usage.CompletionTokens {
				t.Errorf("total_tokens = %d, want the sum", got.Usage.TotalTokens)
			}
			if len(got.Choices) != tc.n || got.Choices[0].Message.Role != "assistant" || got.Choices[0].FinishReason != "stop" {
				t.Errorf("choices = %+v, want %d assistant choices finished by stop", got.Choices, tc.n)
			}
			text := lastUserText(&req)
			if want := "echo: " + text[:min(40, len(text))]; str(got.Choices[0].Message.Content) != want {
				t.Errorf("content = %q, want %q", str(got.Choices[0].Message.Content), want)
			}
			if got.Object != "chat.completion" || got.Model != req.Model || !strings.HasPrefix(got.ID, "chatcmpl-") {
				t.Errorf("object/model/id = %q/%q/%q", got.Object, got.Model, got.ID)
			}
			if !strings.HasPrefix(c.header("x-request-id"), "req_") || c.header("openai-model") != req.Model || c.header("openai-processing-ms") == "" {
				t.Errorf("headers = %v", c.resp.Header)
			}
			if c.header("x-ratelimit-limit-requests") != "" || c.header("x-ratelimit-limit-tokens") != "" {
				t.Errorf("rate-limit headers sent without limits: %v", c.resp.Header)
			}
			wantPrompt += int64(got.Usage.PromptTokens)
			wantCompletion += int64(got.Usage.CompletionTokens)
		})
	}
	st := s.Stats()
	if st.Requests != 3 || st.ByStatus["200"] != 3 || st.ByModel["gpt-4o"] != 1 || st.ByModel["llama-3"] != 1 {
		t.Errorf("stats = %+v", st)
	}
	if st.PromptTokens != wantPrompt || st.CompletionTokens != wantCompletion {
		t.Errorf("stats tokens = %d/%d, want %d/%d", st.PromptTokens, st.CompletionTokens, wantPrompt, wantCompletion)
	}
}

func TestRPMLimitRefillsWithClock(t *testing.T) {
	clk := newClock()
	s, ts := start(t, Config{RPM: 3, Now: clk.Now})
	url := ts.URL + "/v1/chat/completions"
	req := body("gpt-4o", "hello", nil)
	for i, wantReset := range []string{"20s", "40s", "1m0s"} {
		c := post(t, nil, url, req)
		if c.resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d %s", i, c.resp.StatusCode, c.body)
		}
		if got := c.headerInt(t, "x-ratelimit-remaining-requests"); got != int64(2-i) {
			t.Errorf("request %d: remaining-requests = %d, want %d", i, got, 2-i)
		}
		if got := c.header("x-ratelimit-reset-requests"); got != wantReset {
			t.Errorf("request %d: reset-requests = %q, want %q", i, got, wantReset)
		}
		if c.header("x-ratelimit-limit-requests") != "3" || c.header("x-ratelimit-limit-tokens") != "" {
			t.Errorf("request %d: limit headers = %v", i, c.resp.Header)
		}
	}
	c := post(t, nil, url, req)
	if c.resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("4th request: status %d, want 429", c.resp.StatusCode)
	}
	e := c.apiErr(t)
	if e.Type != "requests" || str(e.Code) != "rate_limit_exceeded" || e.Param != nil ||
		!strings.Contains(e.Message, "Rate limit reached for gpt-4o in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.") {
		t.Errorf("429 error = %+v", e)
	}
	if ms, sec := c.headerInt(t, "retry-after-ms"), c.headerInt(t, "retry-after"); ms != 20000 || sec != 20 {
		t.Errorf("retry-after-ms/retry-after = %d/%d, want 20000/20", ms, sec)
	}
	if c.header("x-ratelimit-remaining-requests") != "0" {
		t.Errorf("429 remaining-requests = %q, want 0", c.header("x-ratelimit-remaining-requests"))
	}

	clk.Advance(19999 * time.Millisecond)
	c = post(t, nil, url, req)
	if c.resp.StatusCode != http.StatusTooManyRequests || c.header("retry-after-ms") != "1" || c.header("retry-after") != "1" {
		t.Fatalf("1 ms early: status %d retry-after-ms %q retry-after %q", c.resp.StatusCode, c.header("retry-after-ms"), c.header("retry-after"))
	}
	clk.Advance(time.Millisecond)
	if c = post(t, nil, url, req); c.resp.StatusCode != 200 {
		t.Fatalf("after waiting retry-after-ms: status %d %s", c.resp.StatusCode, c.body)
	}
	st := s.Stats()
	if st.Throttled != 2 || st.RateLimited != 2 || st.ByStatus["429"] != 2 || st.ByStatus["200"] != 4 {
		t.Errorf("stats = %+v", st)
	}
	if !st.FirstRequestAt.Before(st.LastRequestAt) {
		t.Errorf("first/last request at = %v/%v", st.FirstRequestAt, st.LastRequestAt)
	}
}

func TestTPMChargesPromptPlusMaxTokensTimesN(t *testing.T) {
	big := body("gpt-4o", "count me", map[string]any{"max_tokens": 100, "n": 3})
	var req jobs.Request
	_ = json.Unmarshal([]byte(big), &req)
	cost := int64(jobs.NewEstimator(DefaultCompletion, jobs.WithMethod(jobs.MethodTokenizer)).Estimate(&req).Total())
	if cost <= 300 {
		t.Fatalf("cost %d does not include max_tokens × n", cost)
	}
	tpm := cost * 3 / 2 // room for one big request, not two
	clk := newClock()
	_, ts := start(t, Config{TPM: tpm, Now: clk.Now})
	url := ts.URL + "/v1/chat/completions"

	c := post(t, nil, url, big)
	if c.resp.StatusCode != 200 {
		t.Fatalf("first: status %d %s", c.resp.StatusCode, c.body)
	}
	remaining := tpm - cost
	if got := c.headerInt(t, "x-ratelimit-remaining-tokens"); got != remaining {
		t.Errorf("remaining-tokens = %d, want %d", got, remaining)
	}
	wantReset := ceilMS(float64(cost) * float64(time.Minute) / float64(tpm))
	if got := c.header("x-ratelimit-reset-tokens"); got != formatReset(wantReset) {
		t.Errorf("reset-tokens = %q, want %q", got, formatReset(wantReset))
	}
	if c.header("x-ratelimit-limit-tokens") != itoa(tpm) || c.header("x-ratelimit-limit-requests") != "" {
		t.Errorf("limit headers = %v", c.resp.Header)
	}

	// Rejected twice: neither consumes.
	for range 2 {
		c = post(t, nil, url, big)
		if c.resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("second: status %d, want 429", c.resp.StatusCode)
		}
		if got := c.headerInt(t, "x-ratelimit-remaining-tokens"); got != remaining {
			t.Errorf("after a rejection remaining-tokens = %d, want %d", got, remaining)
		}
	}
	e := c.apiErr(t)
	if e.Type != "tokens" || str(e.Code) != "rate_limit_exceeded" ||
		!strings.Contains(e.Message, "on tokens per min (TPM): Limit "+itoa(tpm)+", Used "+itoa(cost)+", Requested "+itoa(cost)+".") {
		t.Errorf("429 error = %+v", e)
	}
	wantWait := int64(math.Ceil(float64(cost-remaining) * 60000 / float64(tpm)))
	if got := c.headerInt(t, "retry-after-ms"); got != wantWait {
		t.Errorf("retry-after-ms = %d, want %d", got, wantWait)
	}
	if got := c.headerInt(t, "retry-after"); got != (wantWait+999)/1000 {
		t.Errorf("retry-after = %d, want %d", got, (wantWait+999)/1000)
	}

	// A small request still fits in what the rejections left.
	small := body("gpt-4o", "hi", map[string]any{"max_tokens": 1})
	if c = post(t, nil, url, small); c.resp.StatusCode != 200 {
		t.Fatalf("small request after rejections: status %d %s", c.resp.StatusCode, c.body)
	}
	if got := c.headerInt(t, "x-ratelimit-remaining-tokens"); got >= remaining {
		t.Errorf("remaining-tokens did not decrease: %d", got)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestRequestTooLargeForTPM(t *testing.T) {
	s, ts := start(t, Config{TPM: 100})
	c := post(t, nil, ts.URL+"/v1/chat/completions", body("gpt-4o", "hi", map[string]any{"max_tokens": 500}))
	if c.resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429", c.resp.StatusCode)
	}
	e := c.apiErr(t)
	if e.Type != "tokens" || str(e.Code) != "rate_limit_exceeded" || !strings.HasPrefix(e.Message, "Request too large for gpt-4o in organization org-fake on tokens per min (TPM): Limit 100, Requested ") {
		t.Errorf("error = %+v", e)
	}
	if c.header("retry-after") != "" || c.header("x-fake-request-too-large") != "" {
		t.Errorf("headers = %v, want no retry-after and no fake header", c.resp.Header)
	}
	if c.header("x-ratelimit-remaining-tokens") != "100" {
		t.Errorf("remaining-tokens = %q, want 100 (nothing charged)", c.header("x-ratelimit-remaining-tokens"))
	}
	if s.Stats().Throttled != 1 {
		t.Errorf("throttled = %d, want 1", s.Stats().Throttled)
	}
}

func TestBurstCapacity(t *testing.T) {
	clk := newClock()
	_, ts := start(t, Config{RPM: 60, BurstRequests: 1, Now: clk.Now})
	url := ts.URL + "/v1/chat/completions"
	if c := post(t, nil, url, body("m", "a", nil)); c.resp.StatusCode != 200 || c.header("x-ratelimit-reset-requests") != "1s" {
		t.Fatalf("first: %d reset %q", c.resp.StatusCode, c.header("x-ratelimit-reset-requests"))
	}
	if c := post(t, nil, url, body("m", "a", nil)); c.resp.StatusCode != 429 || c.header("retry-after-ms") != "1000" {
		t.Fatalf("second: %d retry-after-ms %q, want 429 1000", c.resp.StatusCode, c.header("retry-after-ms"))
	}
	clk.Advance(time.Hour) // refill caps at the burst
	for i, want := range []int{200, 429} {
		if c := post(t, nil, url, body("m", "a", nil)); c.resp.StatusCode != want {
			t.Fatalf("after refill %d: status %d, want %d", i, c.resp.StatusCode, want)
		}
	}
}

func TestAuth(t *testing.T) {
	_, open := start(t, Config{})
	_, keyed := start(t, Config{APIKey: "sk-right"})
	req := body("gpt-4o", "hi", nil)

	c := post(t, nil, open.URL+"/v1/chat/completions", req, "Authorization", "")
	e := c.apiErr(t)
	if c.resp.StatusCode != 401 || e.Type != "invalid_request_error" || e.Code != nil || e.Param != nil || !strings.HasPrefix(e.Message, "You didn't provide an API key") {
		t.Errorf("missing key: %d %+v", c.resp.StatusCode, e)
	}
	if !strings.Contains(string(c.body), `"param":null,"code":null`) {
		t.Errorf("missing key body %s: want param and code null", c.body)
	}
	c = post(t, nil, keyed.URL+"/v1/chat/completions", req, "Authorization", "Bearer sk-wrong-key-0000")
	if e = c.apiErr(t); c.resp.StatusCode != 401 || str(e.Code) != "invalid_api_key" || e.Type != "invalid_request_error" || strings.Contains(e.Message, "sk-wrong-key-0000") {
		t.Errorf("wrong key: %d %+v", c.resp.StatusCode, e)
	}
	if c = post(t, nil, keyed.URL+"/v1/chat/completions", req, "Authorization", "Bearer sk-right"); c.resp.StatusCode != 200 {
		t.Errorf("right key: %d %s", c.resp.StatusCode, c.body)
	}
}

func TestValidation(t *testing.T) {
	s, ts := start(t, Config{})
	cases := []struct {
		name, body, param string
	}{
		{"unparsable", `{"model":`, "<null>"},
		{"not an object", `[1]`, "<null>"},
		{"missing model", `{"messages":[{"role":"user","content":"hi"}]}`, "model"},
		{"missing messages", `{"model":"gpt-4o"}`, "messages"},
		{"stream not a boolean", body("gpt-4o", "hi", map[string]any{"stream": "yes"}), "stream"},
		{"stream_options without stream", body("gpt-4o", "hi", map[string]any{"stream_options": map[string]any{"include_usage": true}}), "stream_options"},
		{"bad role", `{"model":"gpt-4o","messages":[{"role":"robot","content":"hi"}]}`, "messages[0].role"},
		{"bad n", body("gpt-4o", "hi", map[string]any{"n": 0}), "n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := post(t, nil, ts.URL+"/v1/chat/completions", tc.body)
			e := c.apiErr(t)
			if c.resp.StatusCode != 400 || e.Type != "invalid_request_error" || str(e.Param) != tc.param {
				t.Errorf("status %d error %+v param %s, want 400 invalid_request_error param %s", c.resp.StatusCode, e, str(e.Param), tc.param)
			}
		})
	}
	if got := s.Stats().ByStatus["400"]; got != int64(len(cases)) {
		t.Errorf("by_status[400] = %d, want %d", got, len(cases))
	}
}

func TestAzureRoute(t *testing.T) {
	clk := newClock()
	s, ts := start(t, Config{APIKey: "azkey", RPM: 1, Now: clk.Now})
	url := ts.URL + "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
	noModel := `{"messages":[{"role":"user","content":"hello azure"}]}`

	c := post(t, nil, url, noModel, "Authorization", "", "api-key", "azkey")
	if c.resp.StatusCode != 200 {
		t.Fatalf("status %d %s", c.resp.StatusCode, c.body)
	}
	if got := decodeCompletion(t, c.body); got.Model != "gpt4o-prod" || str(got.Choices[0].Message.Content) != "echo: hello azure" {
		t.Errorf("completion = %+v", got)
	}
	c = post(t, nil, url, noModel, "Authorization", "", "api-key", "azkey")
	var az struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(c.body, &az); err != nil || c.resp.StatusCode != 429 || az.Error.Code != "429" || !strings.Contains(az.Error.Message, "Please retry after 60 seconds") {
		t.Errorf("azure 429: %d %s", c.resp.StatusCode, c.body)
	}
	if c.header("retry-after") != "60" {
		t.Errorf("azure retry-after = %q, want 60", c.header("retry-after"))
	}
	c = post(t, nil, url, noModel, "Authorization", "")
	if err := json.Unmarshal(c.body, &az); err != nil || c.resp.StatusCode != 401 || az.Error.Code != "401" {
		t.Errorf("azure without key: %d %s", c.resp.StatusCode, c.body)
	}
	if got := s.Stats().ByModel["gpt4o-prod"]; got != 2 {
		t.Errorf("by_model[gpt4o-prod] = %d, want 2", got)
	}
}

func TestControlEndpoints(t *testing.T) {
	_, ts := start(t, Config{})
	chat := ts.URL + "/chat/completions"
	post(t, nil, chat, body("gpt-4o", "hi", nil), "X-Fake-Key", "job-1")
	post(t, nil, chat, body("gpt-4o", "hi", nil), "X-Fake-Key", "job-1")

	getStats := func() Stats {
		resp, err := http.Get(ts.URL + "/_fake/stats")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st Stats
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatalf("decode stats: %v", err)
		}
		return st
	}
	if st := getStats(); st.Requests != 2 || st.RequestsByKey["job-1"] != 2 || st.ByStatus["200"] != 2 || st.MaxInFlight < 1 || st.InFlight != 0 {
		t.Errorf("stats = %+v", st)
	}
	if c := post(t, nil, ts.URL+"/_fake/reset", ""); c.resp.StatusCode != http.StatusNoContent {
		t.Errorf("reset: %d", c.resp.StatusCode)
	}
	if st := getStats(); st.Requests != 0 || len(st.RequestsByKey) != 0 || !st.FirstRequestAt.IsZero() {
		t.Errorf("after reset stats = %+v", st)
	}
	if c := post(t, nil, ts.URL+"/_fake/faults", "foo"); c.resp.StatusCode != 400 || !strings.Contains(c.apiErr(t).Message, `unknown fault "foo"`) {
		t.Errorf("bad spec: %d %s", c.resp.StatusCode, c.body)
	}
	if c := post(t, nil, ts.URL+"/_fake/faults", "503x2"); c.resp.StatusCode != 200 || !strings.Contains(string(c.body), `"default":"503x2"`) {
		t.Errorf("set spec: %d %s", c.resp.StatusCode, c.body)
	}
	resp, err := http.Get(ts.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get(ts.URL + "/v1/models/nope")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(b), "Invalid URL (GET /v1/models/nope)") {
		t.Errorf("unknown route: %d %s", resp.StatusCode, b)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{Faults: "foo"}, `faults: unknown fault "foo"`},
		{Config{RPM: -1}, "rpm: "},
		{Config{BurstTokens: -1}, "burst_tokens: "},
		{Config{DefaultCompletion: -5}, "default_completion: "},
		{Config{Latency: -time.Second}, "latency: "},
	}
	for _, tc := range cases {
		if _, err := New(tc.cfg); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error starting %q", tc.cfg, err, tc.want)
		}
	}
}

func TestFormatReset(t *testing.T) {
	for d, want := range map[time.Duration]string{
		6 * time.Minute:         "6m0s",
		20 * time.Millisecond:   "20ms",
		1200 * time.Millisecond: "1.2s",
		time.Second:             "1s",
		0:                       "0s",
	} {
		if got := formatReset(d); got != want {
			t.Errorf("formatReset(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestPromptOverContextWindow(t *testing.T) {
	s, ts := start(t, Config{ContextWindow: 50})
	c := post(t, nil, ts.URL+"/v1/chat/completions", body("gpt-4o", strings.Repeat("word ", 80), nil))
	if c.resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(c.body), `"code":"context_length_exceeded"`) ||
		!strings.Contains(string(c.body), "maximum context length is 50 tokens") {
		t.Fatalf("status %d body %s, want 400 context_length_exceeded", c.resp.StatusCode, c.body)
	}
	if c := post(t, nil, ts.URL+"/v1/chat/completions", body("gpt-4o", "short", nil)); c.resp.StatusCode != http.StatusOK {
		t.Fatalf("a short prompt got %d", c.resp.StatusCode)
	}
	if st := s.Stats(); st.Throttled != 0 {
		t.Errorf("a refused prompt was charged to the budget: %+v", st)
	}
}
