package upstream

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// Real error bodies, as the providers send them.
const (
	bodyOpenAIInvalid = `{
  "error": {
    "message": "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an integer instead.",
    "type": "invalid_request_error",
    "param": "messages[0].content",
    "code": "invalid_type"
  }
}`
	bodyOpenAIContext = `{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}`
	bodyOpenAIQuota   = `{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`
	bodyOpenAIRate    = `{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	bodyOpenAINumCode = `{"error":{"message":"Bad gateway.","type":"cf_bad_gateway","param":null,"code":502}}`
	bodyAzure429      = `{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 2 seconds."}}`
	bodyAzureFilter   = `{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}`
	bodyAnthropic529  = `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`
	bodyVLLM          = `{"object":"error","message":"The model 'llama-9' does not exist.","type":"NotFoundError","param":null,"code":404}`
	bodyPlainString   = `{"error":"model 'x' not found"}`
	bodyHTML          = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

func TestParseErrorBody(t *testing.T) {
	cases := []struct {
		name                        string
		status                      int
		body                        string
		typ, code, param, msgPrefix string
		errText                     string
	}{
		{"openai invalid", 400, bodyOpenAIInvalid, "invalid_request_error", "invalid_type", "messages[0].content", "Invalid type for",
			"upstream 400 invalid_request_error (code invalid_type, param messages[0].content): Invalid type for 'messages[0].content'"},
		{"openai context length", 400, bodyOpenAIContext, "invalid_request_error", "context_length_exceeded", "messages", "This model's maximum",
			"upstream 400 invalid_request_error (code context_length_exceeded, param messages): This model's"},
		{"openai quota, null param", 429, bodyOpenAIQuota, "insufficient_quota", "insufficient_quota", "", "You exceeded",
			"upstream 429 insufficient_quota: You exceeded your current quota"},
		{"openai rate limit", 429, bodyOpenAIRate, "tokens", "rate_limit_exceeded", "", "Rate limit reached", "upstream 429 tokens (code rate_limit_exceeded): Rate limit"},
		{"numeric code", 502, bodyOpenAINumCode, "cf_bad_gateway", "502", "", "Bad gateway.", "upstream 502 cf_bad_gateway (code 502): Bad gateway."},
		{"azure 429, no type", 429, bodyAzure429, "", "429", "", "Requests to the ChatCompletions_Create", "upstream 429 (code 429): Requests to"},
		{"azure content filter, null type", 400, bodyAzureFilter, "", "content_filter", "prompt", "The response was filtered", "upstream 400 (code content_filter, param prompt): The response"},
		{"anthropic overloaded", 529, bodyAnthropic529, "overloaded_error", "", "", "Overloaded", "upstream 529 overloaded_error: Overloaded"},
		{"vllm top level", 404, bodyVLLM, "NotFoundError", "404", "", "The model 'llama-9'", "upstream 404 NotFoundError (code 404): The model"},
		{"error is a string", 404, bodyPlainString, "", "", "", "model 'x' not found", "upstream 404: model 'x' not found"},
		{"html from a proxy", 502, bodyHTML, "", "", "", "<html> <head><title>502 Bad Gateway", "upstream 502: <html> <head>"},
		{"empty body", 503, "", "", "", "", "Service Unavailable", "upstream 503: Service Unavailable"},
		{"json null", 500, "null", "", "", "", "null", "upstream 500: null"},
		{"unknown json shape", 500, `{"detail":"boom"}`, "", "", "", `{"detail":"boom"}`, `upstream 500: {"detail":"boom"}`},
		{"anthropic type only", 500, `{"type":"error"}`, "", "", "", `{"type":"error"}`, `upstream 500: {"type":"error"}`},
		{"truncated json", 400, `{"error":{"message":"cut`, "", "", "", `{"error":{"message":"cut`, `upstream 400: {"error"`},
		{"unknown status", 599, "", "", "", "", "status 599", "upstream 599: status 599"},
		{"object message", 400, `{"error":{"message":{"a":1},"type":"x","code":true}}`, "x", "true", "", "Bad Request", "upstream 400 x (code true): Bad Request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := ParseErrorBody(tc.status, []byte(tc.body))
			if e.StatusCode != tc.status || e.Type != tc.typ || e.Code != tc.code || e.Param != tc.param {
				t.Errorf("got status %d type %q code %q param %q; want %d %q %q %q", e.StatusCode, e.Type, e.Code, e.Param, tc.status, tc.typ, tc.code, tc.param)
			}
			if !strings.HasPrefix(e.Message, tc.msgPrefix) {
				t.Errorf("Message = %q, want prefix %q", e.Message, tc.msgPrefix)
			}
			if !strings.HasPrefix(e.Error(), tc.errText) {
				t.Errorf("Error() = %q, want prefix %q", e.Error(), tc.errText)
			}
			if string(e.Body) != tc.body {
				t.Errorf("Body = %q, want the raw body", e.Body)
			}
			if e.RateLimit != NoRateLimit() {
				t.Errorf("RateLimit = %+v, want none (headers are the caller's)", e.RateLimit)
			}
		})
	}
}

func TestParseErrorBodyBounds(t *testing.T) {
	long := strings.Repeat("é", 5000)
	e := ParseErrorBody(400, []byte(`{"error":{"message":"`+long+`","type":"`+long+`"}}`))
	if len(e.Body) != MaxErrorBody {
		t.Errorf("Body kept %d bytes, want %d", len(e.Body), MaxErrorBody)
	}
	if len(e.Message) > maxMessageLen+len("…") || len(e.Type) > maxFieldLen+len("…") {
		t.Errorf("fields not bounded: message %d bytes, type %d bytes", len(e.Message), len(e.Type))
	}
	if !utf8.ValidString(e.Message) || !utf8.ValidString(e.Type) {
		t.Errorf("a cut must land on a rune boundary")
	}
	bin := ParseErrorBody(500, []byte{0xff, 0xfe, 0, 1, 'o', 'k', '\n', '\t', 0x80})
	if !utf8.ValidString(bin.Message) || strings.ContainsAny(bin.Message, "\x00\x01\n\t") {
		t.Errorf("binary body not sanitized: %q", bin.Message)
	}
}

func TestTransportErrorUnwrap(t *testing.T) {
	cause := errors.New("boom")
	var err error = fmt.Errorf("call: %w", &TransportError{Kind: KindReset, Op: "await response", Err: cause})
	var te *TransportError
	if !errors.As(err, &te) || te.Kind != KindReset || !errors.Is(err, cause) {
		t.Fatalf("errors.As/Is through TransportError failed: %v", err)
	}
	if got, want := te.Error(), "upstream await response failed (reset): boom"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}

func FuzzParseErrorBody(f *testing.F) {
	for _, b := range []string{bodyOpenAIInvalid, bodyOpenAIContext, bodyOpenAIQuota, bodyOpenAIRate, bodyOpenAINumCode,
		bodyAzure429, bodyAzureFilter, bodyAnthropic529, bodyVLLM, bodyPlainString, bodyHTML, "", "null", "[]", `{"error":null}`,
		`{"error":[1,2]}`, `{"error":{"code":1e999}}`, `{"message":"\ud800"}`, "\xff\xfe"} {
		f.Add(400, []byte(b))
		f.Add(529, []byte(b))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		e := ParseErrorBody(status, body)
		if e == nil {
			t.Fatal("nil Error")
		}
		if e.StatusCode != status || len(e.Body) > MaxErrorBody || e.Message == "" {
			t.Fatalf("bad Error %+v", e)
		}
		msg := e.Error()
		if !utf8.ValidString(msg) || strings.ContainsAny(msg, "\n\r\x00") {
			t.Fatalf("Error() is not one clean line: %q", msg)
		}
	})
}
