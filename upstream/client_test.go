package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmq/llmq/jobs"
)

const (
	testKey        = "sk-test-KEY-abcdef0123456789"
	requestBody    = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	completionJSON = `{"id":"chatcmpl-1","object":"chat.completion","created":1741000000,"model":"gpt-4o-mini-2024-07-18",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}`
)

// testNow is the fake clock's start; each reading advances it by a step.
var testNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func stepClock(step time.Duration) func() time.Time {
	var n atomic.Int64
	return func() time.Time { return testNow.Add(time.Duration(n.Add(1)-1) * step) }
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Key == nil {
		cfg.Key = StaticKey(testKey)
	}
	if cfg.Now == nil {
		cfg.Now = stepClock(0)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// serve starts an httptest server closed when the test ends.
func serve(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// hang starts a server whose handler runs before (when not nil) and then
// waits until the client goes away or the test ends: no sleeping, the
// client's own timeout or cancel ends the call.
func hang(t *testing.T, before func(http.ResponseWriter)) *httptest.Server {
	t.Helper()
	release := make(chan struct{})
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if before != nil {
			before(w)
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	return srv
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Config.Key") {
		t.Fatalf("New without a key: %v", err)
	}
	for _, u := range []string{"ftp://x", "api.openai.com/v1", "http://", "http://x/v1?a=b", "http://[::1"} {
		if _, err := New(Config{Key: StaticKey(testKey), BaseURL: u}); err == nil {
			t.Errorf("New(BaseURL %q) accepted", u)
		}
	}
	c, err := New(Config{Key: StaticKey(testKey)})
	if err != nil || c.endpoint != DefaultBaseURL+"/chat/completions" || c.headerTimeout != DefaultResponseHeaderTimeout ||
		c.firstByteTimeout != DefaultFirstByteTimeout || c.idleTimeout != DefaultIdleTimeout || !c.stream ||
		c.transport.MaxIdleConnsPerHost != DefaultMaxIdleConnsPerHost || c.transport.TLSHandshakeTimeout != DefaultConnectTimeout {
		t.Fatalf("defaults not applied: %v %+v", err, c)
	}
}

func TestChatSuccess(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.Method != http.MethodPost, r.URL.Path != "/v1/chat/completions":
			http.Error(w, "wrong route "+r.Method+" "+r.URL.Path, http.StatusTeapot)
			return
		case r.Header.Get("Authorization") != "Bearer "+testKey, r.Header.Get("api-key") != "":
			http.Error(w, "wrong auth", http.StatusTeapot)
			return
		case r.Header.Get("Content-Type") != "application/json", r.Header.Get("User-Agent") != "llmq-test/1":
			http.Error(w, "wrong headers", http.StatusTeapot)
			return
		case string(body) != requestBody:
			http.Error(w, "body changed", http.StatusTeapot)
			return
		}
		w.Header().Set("x-request-id", "req_123")
		w.Header().Set("x-ratelimit-remaining-tokens", "29990")
		w.Header().Set("x-ratelimit-reset-tokens", "20ms")
		_, _ = io.WriteString(w, completionJSON)
	})
	c := newClient(t, Config{BaseURL: srv.URL + "/v1/", UserAgent: "llmq-test/1", Now: stepClock(250 * time.Millisecond), DisableStream: true})
	resp, err := c.Chat(t.Context(), []byte(requestBody))
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if resp.StatusCode != 200 || resp.RequestID != "req_123" || resp.Model != "gpt-4o-mini-2024-07-18" || string(resp.Body) != completionJSON {
		t.Errorf("response = %+v", resp)
	}
	if resp.Usage != (jobs.Usage{PromptTokens: 9, CompletionTokens: 1, TotalTokens: 10}) {
		t.Errorf("usage = %+v", resp.Usage)
	}
	if resp.RateLimit.RemainingTokens != 29990 || resp.RateLimit.ResetTokens != 20*time.Millisecond || resp.RateLimit.LimitTokens != -1 {
		t.Errorf("rate limit = %+v", resp.RateLimit)
	}
}

func TestChatAzure(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.EscapedPath() != "/openai/deployments/my%20gpt4o/chat/completions" || r.URL.Query().Get("api-version") != "2024-10-21" {
			http.Error(w, "wrong url "+r.URL.String(), http.StatusTeapot)
			return
		}
		if r.Header.Get("api-key") != testKey || r.Header.Get("Authorization") != "" {
			http.Error(w, "wrong auth", http.StatusTeapot)
			return
		}
		_, _ = io.WriteString(w, completionJSON)
	})
	c := newClient(t, Config{BaseURL: srv.URL, Azure: &Azure{}})
	if _, err := c.Chat(t.Context(), []byte(`{"model":"my gpt4o","messages":[]}`)); err != nil {
		t.Fatalf("Azure Chat: %v", err)
	}
	if _, err := c.Chat(t.Context(), []byte(`{"messages":[]}`)); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("Azure without model: %v, want ErrInvalidRequest", err)
	}
	c2 := newClient(t, Config{BaseURL: srv.URL, Azure: &Azure{APIVersion: "2025-01-01-preview"}})
	_, err := c2.Chat(t.Context(), []byte(`{"model":"my gpt4o"}`))
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != http.StatusTeapot {
		t.Fatalf("custom api-version must reach the server: %v", err)
	}
}

func TestChatErrorAnswers(t *testing.T) {
	date := testNow.Add(30 * time.Second).Format(http.TimeFormat)
	cases := []struct {
		name       string
		status     int
		headers    []string
		body       string
		typ, code  string
		retryAfter time.Duration
		check      func(*Error) bool
	}{
		{name: "openai 400", status: 400, body: bodyOpenAIInvalid, typ: "invalid_request_error", code: "invalid_type"},
		{name: "openai 429 with retry-after-ms", status: 429, body: bodyOpenAIRate, typ: "tokens", code: "rate_limit_exceeded",
			headers:    []string{"retry-after-ms", "1500", "Retry-After", "2", "x-ratelimit-reset-tokens", "6m0s", "x-ratelimit-remaining-tokens", "0"},
			retryAfter: 1500 * time.Millisecond,
			check: func(e *Error) bool {
				return e.RateLimit.ResetTokens == 6*time.Minute && e.RateLimit.RemainingTokens == 0
			}},
		{name: "azure 429 Retry-After seconds", status: 429, body: bodyAzure429, code: "429", headers: []string{"Retry-After", "2"}, retryAfter: 2 * time.Second},
		{name: "anthropic 529 Retry-After date", status: 529, body: bodyAnthropic529, typ: "overloaded_error", headers: []string{"Retry-After", date}, retryAfter: 30 * time.Second},
		{name: "quota", status: 429, body: bodyOpenAIQuota, typ: "insufficient_quota", code: "insufficient_quota"},
		{name: "html 502", status: 502, body: bodyHTML, check: func(e *Error) bool { return strings.Contains(e.Message, "502 Bad Gateway") }},
		{name: "request id", status: 500, body: `{"error":{"message":"x","type":"server_error"}}`, typ: "server_error",
			headers: []string{"x-request-id", "req_9"}, check: func(e *Error) bool { return e.RequestID == "req_9" }},
		{name: "redirect is not followed", status: 307, headers: []string{"Location", "/elsewhere"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				for i := 0; i+1 < len(tc.headers); i += 2 {
					w.Header().Set(tc.headers[i], tc.headers[i+1])
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			c := newClient(t, Config{BaseURL: srv.URL})
			resp, err := c.Chat(t.Context(), []byte(requestBody))
			var e *Error
			if resp != nil || !errors.As(err, &e) {
				t.Fatalf("Chat = %v, %v; want *Error", resp, err)
			}
			if e.StatusCode != tc.status || e.Type != tc.typ || e.Code != tc.code || e.RetryAfter != tc.retryAfter {
				t.Errorf("got %d %q %q retry %v; want %d %q %q retry %v", e.StatusCode, e.Type, e.Code, e.RetryAfter, tc.status, tc.typ, tc.code, tc.retryAfter)
			}
			if tc.check != nil && !tc.check(e) {
				t.Errorf("check failed for %+v", e)
			}
		})
	}
}

// TestKeyNotInErrors makes a server echo the key back and checks that no
// error text, formatted error or kept body shows it.
func TestKeyNotInErrors(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintf(w, `{"error":{"message":"Incorrect API key provided: %s.","type":"invalid_request_error","param":%q,"code":"invalid_api_key"}}`, got, got)
	})
	c := newClient(t, Config{BaseURL: srv.URL})
	_, err := c.Chat(t.Context(), []byte(requestBody))
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != 401 {
		t.Fatalf("want a 401 *Error, got %v", err)
	}
	refused := newClient(t, Config{BaseURL: closedPortURL(t)})
	_, terr := refused.Chat(t.Context(), []byte(requestBody))
	out := fmt.Sprintf("%v\n%+v\n%#v\n%s\n%v\n%+v\n%s", err, err, err, e.Body, terr, terr, e.Message)
	if strings.Contains(out, testKey) {
		t.Fatalf("key leaked:\n%s", out)
	}
	if !strings.Contains(e.Message, "[redacted]") {
		t.Fatalf("the echoed key should read [redacted]: %q", e.Message)
	}
}

func closedPortURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func TestChatBadSuccessBody(t *testing.T) {
	cases := []struct {
		name string
		h    http.HandlerFunc
		kind TransportKind
	}{
		{"not json", bodyHandler("<html>ok</html>"), KindMalformed},
		{"empty", bodyHandler(""), KindMalformed},
		{"no choices", bodyHandler(`{"object":"chat.completion","choices":[]}`), KindMalformed},
		{"choices missing", bodyHandler(`{"object":"chat.completion","model":"m"}`), KindMalformed},
		{"not a completion", bodyHandler(`{"object":"error","message":"hidden failure","choices":[{}]}`), KindMalformed},
		{"json array", bodyHandler(`[{"choices":[{}]}]`), KindMalformed},
		{"trailing garbage", bodyHandler(completionJSON + `}{`), KindMalformed},
		{"json cut short", bodyHandler(completionJSON[:60]), KindTruncated},
		{"body shorter than Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "4000")
			_, _ = io.WriteString(w, completionJSON[:60])
		}, KindTruncated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, tc.h)
			c := newClient(t, Config{BaseURL: srv.URL})
			_, err := c.Chat(t.Context(), []byte(requestBody))
			assertKind(t, err, tc.kind, "")
		})
	}
}

func bodyHandler(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, body) }
}

func assertKind(t *testing.T, err error, kind TransportKind, op string) {
	t.Helper()
	var te *TransportError
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *TransportError", err, err)
	}
	if te.Kind != kind || (op != "" && te.Op != op) {
		t.Fatalf("kind %s op %q, want %s %q; error: %v", te.Kind, te.Op, kind, op, err)
	}
	if te.Err == nil || !errors.Is(err, te.Err) {
		t.Fatalf("TransportError must carry and unwrap its cause: %v", err)
	}
}

// rawServer answers each connection's first request with script, for
// failures net/http's server will not produce.
func rawServer(t *testing.T, script func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				script(c.(*net.TCPConn))
			})
		}
	})
	return "http://" + ln.Addr().String()
}

func hijack(w http.ResponseWriter) *net.TCPConn {
	c, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	return c.(*net.TCPConn)
}

func TestChatTransportKinds(t *testing.T) {
	t.Run("connect refused", func(t *testing.T) {
		c := newClient(t, Config{BaseURL: closedPortURL(t)})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindConnectRefused, "connect")
	})
	t.Run("dns", func(t *testing.T) {
		c := newClient(t, Config{BaseURL: "http://llmq-test.invalid/v1"})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindDNS, "connect")
	})
	t.Run("connect timeout", func(t *testing.T) {
		srv := serve(t, bodyHandler(completionJSON))
		// A 1ns dial budget is spent before the connect starts: net.Dialer
		// fails with its own timeout, as it would on a silent host.
		c := newClient(t, Config{BaseURL: srv.URL, ConnectTimeout: time.Nanosecond})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindConnectTimeout, "connect")
	})
	t.Run("reset before response", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			c := hijack(w)
			_ = c.SetLinger(0)
			c.Close()
		})
		c := newClient(t, Config{BaseURL: srv.URL})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindReset, "await response")
	})
	t.Run("EOF before response", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) { hijack(w).Close() })
		c := newClient(t, Config{BaseURL: srv.URL})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindReset, "await response")
	})
	t.Run("reset mid body", func(t *testing.T) {
		url := rawServer(t, func(c *net.TCPConn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"+completionJSON[:40])
			_ = c.SetLinger(0)
		})
		c := newClient(t, Config{BaseURL: url})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		var te *TransportError
		if !errors.As(err, &te) || (te.Kind != KindReset && te.Kind != KindTruncated) {
			t.Fatalf("reset mid body: %v, want reset or truncated", err)
		}
	})
	t.Run("garbled status line", func(t *testing.T) {
		url := rawServer(t, func(c *net.TCPConn) { _, _ = io.WriteString(c, "HTTP/1.1 two hundred\r\n\r\n") })
		c := newClient(t, Config{BaseURL: url})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindMalformed, "await response")
	})
	t.Run("response header timeout", func(t *testing.T) {
		srv := hang(t, nil)
		c := newClient(t, Config{BaseURL: srv.URL, ResponseHeaderTimeout: 100 * time.Millisecond, DisableStream: true})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindHeaderTimeout, "await response")
		c = newClient(t, Config{BaseURL: srv.URL, FirstByteTimeout: 100 * time.Millisecond})
		_, err = c.Chat(t.Context(), []byte(requestBody))
		assertKind(t, err, KindHeaderTimeout, "await response")
	})
	t.Run("job deadline awaiting headers", func(t *testing.T) {
		srv := hang(t, nil)
		c := newClient(t, Config{BaseURL: srv.URL})
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err := c.Chat(ctx, []byte(requestBody))
		assertKind(t, err, KindTimeout, "await response")
	})
	t.Run("job deadline reading body", func(t *testing.T) {
		srv := hang(t, func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "4000")
			_, _ = io.WriteString(w, completionJSON[:40])
			w.(http.Flusher).Flush()
		})
		c := newClient(t, Config{BaseURL: srv.URL})
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err := c.Chat(ctx, []byte(requestBody))
		assertKind(t, err, KindTimeout, "read response")
	})
	t.Run("canceled by caller", func(t *testing.T) {
		arrived := make(chan struct{})
		srv := hang(t, func(http.ResponseWriter) { close(arrived) })
		c := newClient(t, Config{BaseURL: srv.URL})
		ctx, cancel := context.WithCancel(t.Context())
		go func() { <-arrived; cancel() }()
		_, err := c.Chat(ctx, []byte(requestBody))
		assertKind(t, err, KindCanceled, "await response")
	})
	t.Run("key unavailable", func(t *testing.T) {
		c := newClient(t, Config{BaseURL: closedPortURL(t), Key: StaticKey("")})
		_, err := c.Chat(t.Context(), []byte(requestBody))
		var te *TransportError
		if !errors.Is(err, ErrKey) || errors.As(err, &te) {
			t.Fatalf("empty key: %v, want ErrKey before any network call", err)
		}
	})
}

// TestChatKeyRotation is the worker's 401 path: the server accepts only the
// new key, the file is rotated in place (same size and mtime, so only
// Refresh can see it), RefreshKey reports the change and the next call
// succeeds; the fingerprint tells the fleet the key changed.
func TestChatKeyRotation(t *testing.T) {
	const oldKey, newKey = "sk-old-key-1111", "sk-new-key-2222"
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+newKey {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}`)
			return
		}
		_, _ = io.WriteString(w, completionJSON)
	})
	path := filepath.Join(t.TempDir(), "key")
	mtime := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	writeKey(t, path, oldKey, mtime)
	c := newClient(t, Config{BaseURL: srv.URL, Key: FileKey(path)})

	_, err := c.Chat(t.Context(), []byte(requestBody))
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != http.StatusUnauthorized {
		t.Fatalf("old key: %v, want 401", err)
	}
	before := c.KeyFingerprint()
	if changed, err := c.key.Refresh(); changed || err != nil {
		t.Fatalf("RefreshKey without rotation = %v, %v", changed, err)
	}
	writeKey(t, path, newKey, mtime)
	if changed, err := c.key.Refresh(); !changed || err != nil {
		t.Fatalf("RefreshKey after rotation = %v, %v", changed, err)
	}
	if _, err := c.Chat(t.Context(), []byte(requestBody)); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if after := c.KeyFingerprint(); after == before || after != Fingerprint(newKey) {
		t.Fatalf("fingerprint %q -> %q", before, after)
	}
}
