package fakeupstream

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/llmq/llmq/llmqtest"
)

// clock is the manual clock the tests drive.
type clock = llmqtest.Clock

func newClock() *clock { return llmqtest.NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) }

// start runs a Server for cfg behind a real HTTP server.
func start(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		s.Close()
		ts.Close()
	})
	return s, ts
}

// body returns a chat-completions body; extra is merged in.
func body(model, content string, extra map[string]any) string {
	m := map[string]any{
		"model":    model,
		"messages": []map[string]any{{"role": "system", "content": "be brief"}, {"role": "user", "content": content}},
	}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// call is one answered request.
type call struct {
	resp *http.Response
	body []byte
}

func (c call) header(k string) string { return c.resp.Header.Get(k) }

func (c call) headerInt(t *testing.T, k string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(c.resp.Header.Get(k), 10, 64)
	if err != nil {
		t.Fatalf("header %s = %q: %v", k, c.resp.Header.Get(k), err)
	}
	return n
}

// apiErr decodes an OpenAI error body.
func (c call) apiErr(t *testing.T) apiError {
	t.Helper()
	var e struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(c.body, &e); err != nil || e.Error == nil {
		t.Fatalf("status %d: body %s is not an OpenAI error: %v", c.resp.StatusCode, c.body, err)
	}
	return *e.Error
}

func str(p *string) string {
	if p == nil {
		return "<null>"
	}
	return *p
}

// post sends a request with a bearer key plus headers (name, value pairs)
// and reads the whole answer.
func post(t *testing.T, client *http.Client, url, reqBody string, headers ...string) call {
	t.Helper()
	resp, err := do(client, url, reqBody, headers...)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return call{resp: resp, body: b}
}

func do(client *http.Client, url, reqBody string, headers ...string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(reqBody)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-test-key-123456")
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	if client == nil {
		client = http.DefaultClient
	}
	return client.Do(req)
}
