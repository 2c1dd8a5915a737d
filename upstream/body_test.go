package upstream

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/llmq/llmq/jobs"
)

// answer serves one fixed body with status and extra headers.
func answer(t *testing.T, status int, body string, header ...string) *Client {
	t.Helper()
	srv := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	})
	return newClient(t, Config{BaseURL: srv.URL})
}

func completionWith(choices, usage string) string {
	return `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":` + choices + `,"usage":` + usage + `}`
}

const okUsage = `{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}`

// Choices without an answer are malformed (retried), never a success.
func TestChatRefusesChoicesWithoutAnswer(t *testing.T) {
	for name, choices := range map[string]string{
		"null choice":         `[null]`,
		"empty choice":        `[{}]`,
		"null message":        `[{"index":0,"message":null,"finish_reason":"stop"}]`,
		"empty message":       `[{"index":0,"message":{"role":"assistant"},"finish_reason":"stop"}]`,
		"null content":        `[{"index":0,"message":{"role":"assistant","content":null,"refusal":null},"finish_reason":"stop"}]`,
		"no tool calls":       `[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[]},"finish_reason":"tool_calls"}]`,
		"second choice empty": `[{"index":0,"message":{"role":"assistant","content":"a"}},{"index":1,"message":{}}]`,
		"choice not object":   `["hello"]`,
	} {
		_, err := answer(t, 200, completionWith(choices, okUsage)).Chat(t.Context(), []byte(requestBody))
		var te *TransportError
		if !errors.As(err, &te) || te.Kind != KindMalformed {
			t.Errorf("%s: err = %v, want KindMalformed", name, err)
		}
	}
	for name, choices := range map[string]string{
		"empty content": `[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"length"}]`,
		"tool calls":    `[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]`,
		"refusal":       `[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."}}]`,
		"content parts": `[{"index":0,"message":{"role":"assistant","content":[{"type":"text","text":"hi"}]}}]`,
	} {
		if _, err := answer(t, 200, completionWith(choices, okUsage)).Chat(t.Context(), []byte(requestBody)); err != nil {
			t.Errorf("%s: %v, want a success", name, err)
		}
	}
}

const oneChoice = `[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]`

// Usage is read leniently; an unreadable one keeps the answer.
func TestChatUsageLenient(t *testing.T) {
	for _, tc := range []struct {
		usage   string
		want    jobs.Usage
		wantErr bool
	}{
		{`{"prompt_tokens":5.0,"completion_tokens":2.0,"total_tokens":7.0}`, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}, false},
		{`{"prompt_tokens":"5","completion_tokens":"2"}`, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}, false},
		{`{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}`, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}, false},
		{`null`, jobs.Usage{}, false},
		{`{"prompt_tokens":"lots","completion_tokens":2}`, jobs.Usage{}, true},
		{`{"prompt_tokens":-1}`, jobs.Usage{}, true},
		{`"n/a"`, jobs.Usage{}, true},
	} {
		resp, err := answer(t, 200, completionWith(oneChoice, tc.usage)).Chat(t.Context(), []byte(requestBody))
		if err != nil {
			t.Errorf("usage %s: %v, want the answer kept", tc.usage, err)
			continue
		}
		if resp.Usage != tc.want || (resp.UsageErr != nil) != tc.wantErr {
			t.Errorf("usage %s: got %+v (err %v), want %+v (error %v)", tc.usage, resp.Usage, resp.UsageErr, tc.want, tc.wantErr)
		}
	}
}

// Invalid UTF-8 in a 200 body: the answer is kept with U+FFFD in place of
// the bad bytes.
func TestChatInvalidUTF8Kept(t *testing.T) {
	body := completionWith(`[{"index":0,"message":{"role":"assistant","content":"`+"caf\xe9 \xff ok"+`"},"finish_reason":"stop"}]`, okUsage)
	resp, err := answer(t, 200, body).Chat(t.Context(), []byte(requestBody))
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.Valid(resp.Body) || !strings.Contains(string(resp.Body), "caf\uFFFD \uFFFD ok") {
		t.Errorf("body %q: want valid UTF-8 with U+FFFD", resp.Body)
	}
}

// escaped writes s as \u escapes, as a JSON encoder may.
func escaped(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteString(`\u00`)
		b.WriteString(strings.ToLower(string("0123456789ABCDEF"[r>>4]) + string("0123456789ABCDEF"[r&15])))
	}
	return b.String()
}

// The key never survives in anything Chat returns: not raw, not
// JSON-escaped, not in a header, on success and on error.
func TestChatScrubsEchoedKey(t *testing.T) {
	content := `"content":"raw ` + testKey + ` escaped ` + escaped(testKey) + ` mixed sk-` + escaped(testKey[3:]) + `"`
	body := completionWith(`[{"index":0,"message":{"role":"assistant",`+content+`},"finish_reason":"stop"}]`, okUsage)
	resp, err := answer(t, 200, body, "x-request-id", "req_"+testKey).Chat(t.Context(), []byte(requestBody))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(resp.RequestID, testKey) || strings.Contains(string(resp.Body), testKey) ||
		strings.Contains(string(resp.Body), escaped(testKey[3:])) || strings.Count(string(resp.Body), Redacted) != 3 {
		t.Errorf("request id %q body %s: key not scrubbed", resp.RequestID, resp.Body)
	}

	errBody := `{"error":{"message":"bad key ` + escaped(testKey) + `","type":"invalid_request_error","param":"` + testKey + `","code":null}}`
	_, err = answer(t, 400, errBody, "x-request-id", "req_"+testKey).Chat(t.Context(), []byte(requestBody))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *Error", err)
	}
	for what, s := range map[string]string{"error": e.Error(), "request id": e.RequestID, "body": string(e.Body), "param": e.Param} {
		if strings.Contains(s, testKey) || strings.Contains(s, escaped(testKey)) {
			t.Errorf("%s shows the key: %s", what, s)
		}
	}
	// A body cut mid-string is scrubbed too.
	_, err = answer(t, 500, `{"error":{"message":"`+escaped(testKey)).Chat(t.Context(), []byte(requestBody))
	if !errors.As(err, &e) || strings.Contains(string(e.Body), escaped(testKey)) || strings.Contains(e.Error(), testKey) {
		t.Errorf("cut body: %v / %s", err, e.Body)
	}
}
