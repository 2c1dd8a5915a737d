package fakeupstream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseFaults(t *testing.T) {
	good := map[string]string{
		"":                               "",
		"503,503,200":                    "503,503,200",
		" 503x3 , hang":                  "503x3,hang",
		"ratelimit:1200ms,contextx2":     "ratelimit:1.2s,contextx2",
		"slow:3s,latency:200ms,reset":    "slow:3s,latency:200ms,reset",
		"random:500=5%,latency=200ms@5%": "random:500=5%,latency=200ms@5%",
		"random:reset=0.5,quota=50%":     "random:reset=50%,quota=50%",
	}
	for spec, want := range good {
		p, err := ParseFaults(spec)
		if err != nil {
			t.Errorf("ParseFaults(%q): %v", spec, err)
			continue
		}
		if got := p.String(); got != want {
			t.Errorf("ParseFaults(%q).String() = %q, want %q", spec, got, want)
		}
	}
	bad := map[string]string{
		"foo":                     `unknown fault "foo"`,
		"503,,200":                "element 2 is empty",
		"302":                     "status 302 not supported",
		"503x0":                   "repeat must be 1 or more",
		"hang:1s":                 "takes no argument",
		"latency":                 "latency needs a duration",
		"ratelimit:soon":          "positive duration",
		"random:500":              "want name=P%",
		"random:500=60%,hang=50%": "sum to",
		"random:500=0%":           "probability",
		"random:latency=5%":       "latency=D@P%",
	}
	for spec, want := range bad {
		_, err := ParseFaults(spec)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalidFaults) {
			t.Errorf("ParseFaults(%q) = %v, want an ErrInvalidFaults containing %q", spec, err, want)
		}
	}
}

func TestRandomFaultsAreSeeded(t *testing.T) {
	plan, err := ParseFaults("random:500=30%,reset=20%,latency=50ms@10%")
	if err != nil {
		t.Fatal(err)
	}
	draw := func(seed uint64) (string, map[string]int) {
		rng := rand.New(rand.NewPCG(seed, seed))
		c := &cursor{plan: plan}
		var b strings.Builder
		counts := map[string]int{}
		for range 2000 {
			f, extra := c.next(rng)
			b.WriteString(f.String())
			counts[f.String()]++
			if extra > 0 {
				counts["latency"]++
			}
		}
		return b.String(), counts
	}
	a, counts := draw(7)
	if b, _ := draw(7); a != b {
		t.Error("same seed drew different faults")
	}
	if b, _ := draw(8); a == b {
		t.Error("different seeds drew the same faults")
	}
	for name, want := range map[string]int{"500": 600, "reset": 400, "200": 1000, "latency": 200} {
		if got := counts[name]; got < want*7/10 || got > want*13/10 {
			t.Errorf("%s drawn %d times in 2000, want about %d", name, got, want)
		}
	}
}

func statuses(t *testing.T, url string, n int, headers ...string) string {
	t.Helper()
	var got []string
	for range n {
		c := post(t, nil, url, body("gpt-4o", "hi", nil), headers...)
		got = append(got, c.resp.Status[:3])
	}
	return strings.Join(got, ",")
}

func TestSequenceCursors(t *testing.T) {
	s, ts := start(t, Config{Faults: "503x3,200,500"})
	url := ts.URL + "/v1/chat/completions"
	if got := statuses(t, url, 7); got != "503,503,503,200,500,200,200" {
		t.Errorf("default sequence = %s", got)
	}
	st := s.Stats()
	if st.ByFault["503"] != 3 || st.ByFault["500"] != 1 || len(st.ByFault) != 2 {
		t.Errorf("by_fault = %v", st.ByFault)
	}

	// Per header value and fake key: each key has its own cursor.
	for _, key := range []string{"job-a", "job-b"} {
		if got := statuses(t, url, 3, "X-Fake-Faults", "429,408", "X-Fake-Key", key); got != "429,408,200" {
			t.Errorf("key %s: sequence = %s", key, got)
		}
	}
	if st := s.Stats(); st.RequestsByKey["job-a"] != 3 || st.RequestsByKey["job-b"] != 3 {
		t.Errorf("requests_by_key = %v", st.RequestsByKey)
	}

	// Model-scoped plans win over the default; the header wins over both.
	if err := s.SetFaults("500"); err != nil {
		t.Fatal(err)
	}
	if c := post(t, nil, ts.URL+"/_fake/faults?model=gpt-x", "404,502"); c.resp.StatusCode != 200 {
		t.Fatalf("set model faults: %d %s", c.resp.StatusCode, c.body)
	}
	modelStatus := func(model string, headers ...string) int {
		return post(t, nil, url, body(model, "hi", nil), headers...).resp.StatusCode
	}
	if got := modelStatus("gpt-x", "X-Fake-Faults", "409"); got != 409 {
		t.Errorf("header over model: %d, want 409", got)
	}
	for i, want := range []int{404, 502, 200} {
		if got := modelStatus("gpt-x"); got != want {
			t.Errorf("gpt-x request %d: %d, want %d", i, got, want)
		}
	}
	for i, want := range []int{500, 200} {
		if got := modelStatus("gpt-4o"); got != want {
			t.Errorf("gpt-4o request %d: %d, want %d", i, got, want)
		}
	}
	// Reset rewinds the sequences.
	s.Reset()
	if got := modelStatus("gpt-x"); got != 404 {
		t.Errorf("after reset gpt-x: %d, want 404", got)
	}
}

func TestErrorFaultBodies(t *testing.T) {
	_, ts := start(t, Config{RPM: 100})
	url := ts.URL + "/v1/chat/completions"
	cases := []struct {
		spec              string
		status            int
		typ, code, param  string
		retryAfter, msPfx string
	}{
		{"400", 400, "invalid_request_error", "invalid_type", "messages[0].content", "", ""},
		{"401", 401, "invalid_request_error", "invalid_api_key", "<null>", "", ""},
		{"403", 403, "invalid_request_error", "permission_denied", "<null>", "", ""},
		{"404", 404, "invalid_request_error", "model_not_found", "<null>", "", "The model `gpt-4o` does not exist"},
		{"notfound", 404, "invalid_request_error", "model_not_found", "<null>", "", "The model `gpt-4o`"},
		{"408", 408, "server_error", "timeout", "<null>", "", ""},
		{"409", 409, "invalid_request_error", "conflict", "<null>", "", ""},
		{"413", 413, "invalid_request_error", "request_too_large", "<null>", "", ""},
		{"422", 422, "invalid_request_error", "unprocessable_entity", "<null>", "", ""},
		{"429", 429, "requests", "rate_limit_exceeded", "<null>", "1", "Rate limit reached"},
		{"ratelimit:1200ms", 429, "requests", "rate_limit_exceeded", "<null>", "2", "Rate limit reached"},
		{"quota", 429, "insufficient_quota", "insufficient_quota", "<null>", "", "You exceeded your current quota"},
		{"500", 500, "server_error", "<null>", "<null>", "", "The server had an error"},
		{"503", 503, "server_error", "<null>", "<null>", "", "The engine is currently overloaded"},
		{"context", 400, "invalid_request_error", "context_length_exceeded", "messages", "", "This model's maximum context length"},
		{"policy", 400, "invalid_request_error", "content_policy_violation", "<null>", "", ""},
		{"region", 403, "request_forbidden", "unsupported_country_region_territory", "<null>", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			c := post(t, nil, url, body("gpt-4o", "hi", nil), "X-Fake-Faults", tc.spec)
			e := c.apiErr(t)
			if c.resp.StatusCode != tc.status || e.Type != tc.typ || str(e.Code) != tc.code || str(e.Param) != tc.param || !strings.HasPrefix(e.Message, tc.msPfx) {
				t.Errorf("got %d %+v (code %s param %s), want %d type %s code %s param %s message %q...",
					c.resp.StatusCode, e, str(e.Code), str(e.Param), tc.status, tc.typ, tc.code, tc.param, tc.msPfx)
			}
			if c.header("retry-after") != tc.retryAfter {
				t.Errorf("retry-after = %q, want %q", c.header("retry-after"), tc.retryAfter)
			}
			if c.header("x-ratelimit-limit-requests") != "100" || c.header("x-ratelimit-remaining-requests") != "100" {
				t.Errorf("rate-limit headers on a fault = %v (faults are not charged)", c.resp.Header)
			}
		})
	}
	if c := post(t, nil, url, body("gpt-4o", "hi", nil), "X-Fake-Faults", "ratelimit:1200ms", "X-Fake-Key", "again"); c.header("retry-after-ms") != "1200" {
		t.Errorf("ratelimit:1200ms retry-after-ms = %q, want 1200", c.header("retry-after-ms"))
	}
	for _, status := range []string{"502", "504"} {
		c := post(t, nil, url, body("gpt-4o", "hi", nil), "X-Fake-Faults", status)
		if c.resp.Status[:3] != status || !strings.HasPrefix(c.header("Content-Type"), "text/html") || !strings.Contains(string(c.body), "cloudflare") {
			t.Errorf("%s: %s %s", status, c.resp.Status, c.body)
		}
	}
	c := post(t, nil, url, body("gpt-4o", "hi", nil), "X-Fake-Faults", "overloaded")
	if c.resp.StatusCode != 529 || string(c.body) != `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}` {
		t.Errorf("overloaded: %d %s", c.resp.StatusCode, c.body)
	}
	c = post(t, nil, url, body("gpt-4o", "hi", nil), "X-Fake-Faults", "azure429")
	var az struct {
		Error map[string]any `json:"error"`
	}
	if err := json.Unmarshal(c.body, &az); err != nil || c.resp.StatusCode != 429 || az.Error["code"] != "429" || az.Error["type"] != nil || c.header("Retry-After") != "2" {
		t.Errorf("azure429: %d %s %v", c.resp.StatusCode, c.body, c.resp.Header)
	}
	if c := post(t, nil, url, body("gpt-4o", "hi", nil), "X-Fake-Faults", "bogus"); c.resp.StatusCode != 400 || !strings.Contains(c.apiErr(t).Message, "X-Fake-Faults") {
		t.Errorf("bad header spec: %d %s", c.resp.StatusCode, c.body)
	}
}

func TestTransportFaults(t *testing.T) {
	s, ts := start(t, Config{Latency: 5 * time.Millisecond})
	url := ts.URL + "/v1/chat/completions"
	req := body("gpt-4o", "hi", nil)

	t.Run("reset", func(t *testing.T) {
		resp, err := do(nil, url, req, "X-Fake-Faults", "reset")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("got %s, want a connection reset", resp.Status)
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("error %v is not ECONNRESET", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		c := post(t, nil, url, req, "X-Fake-Faults", "malformed")
		var v completion
		var se *json.SyntaxError
		if err := json.Unmarshal(c.body, &v); c.resp.StatusCode != 200 || !errors.As(err, &se) {
			t.Fatalf("status %d decode error %v, want 200 and a JSON syntax error", c.resp.StatusCode, err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		resp, err := do(nil, url, req, "X-Fake-Faults", "truncated")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("status %d read error %v, want 200 and unexpected EOF", resp.StatusCode, err)
		}
	})
	t.Run("slow", func(t *testing.T) {
		began := time.Now()
		c := post(t, nil, url, req, "X-Fake-Faults", "slow")
		// 5 ms latency, then the body over 4×5 ms: a lower bound only.
		if elapsed := time.Since(began); elapsed < 20*time.Millisecond {
			t.Errorf("slow answer took %v, want at least 20ms", elapsed)
		}
		if got := decodeCompletion(t, c.body); c.resp.StatusCode != 200 || len(got.Choices) != 1 {
			t.Errorf("slow answer: %d %s", c.resp.StatusCode, c.body)
		}
	})
	t.Run("hang", func(t *testing.T) {
		client := &http.Client{Timeout: 100 * time.Millisecond}
		resp, err := do(client, url, req, "X-Fake-Faults", "hang")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("got %s, want a client timeout", resp.Status)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("error %v is not a timeout", err)
		}
	})
	t.Run("latency honours cancel", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		r, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(req))
		r.Header.Set("Authorization", "Bearer k")
		r.Header.Set("X-Fake-Faults", "latency:1h")
		if resp, err := http.DefaultClient.Do(r); err == nil {
			resp.Body.Close()
			t.Fatalf("got %s, want the context deadline", resp.Status)
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want context.DeadlineExceeded", err)
		}
	})
	ts.Close() // waits for every handler: the hang and the latency ended with their clients
	st := s.Stats()
	if st.InFlight != 0 || st.Requests != 6 {
		t.Errorf("in_flight/requests = %d/%d, want 0/6", st.InFlight, st.Requests)
	}
	for _, f := range []string{"reset", "malformed", "truncated", "slow", "hang", "latency"} {
		if st.ByFault[f] != 1 {
			t.Errorf("by_fault[%s] = %d, want 1 (%v)", f, st.ByFault[f], st.ByFault)
		}
	}
	if st.ByStatus["200"] != 3 || len(st.ByStatus) != 1 {
		t.Errorf("by_status = %v, want 200: 3 only (reset, hang, cancelled have none)", st.ByStatus)
	}
	if st.CompletionTokens == 0 {
		t.Error("the slow answer's tokens were not counted")
	}
}

func TestCloseReleasesHang(t *testing.T) {
	s, ts := start(t, Config{Faults: "hang"})
	errc := make(chan error, 1)
	go func() {
		resp, err := do(nil, ts.URL+"/v1/chat/completions", body("gpt-4o", "hi", nil))
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	// Wait until the request is held, then release it.
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().ByFault["hang"] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the hang")
		}
		time.Sleep(time.Millisecond)
	}
	s.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("a released hang answered; want the connection closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not release the hang")
	}
}

func TestEchoKeyFault(t *testing.T) {
	const key = "sk-echo-test-key-0123456789"
	s, err := New(Config{Faults: "echokey"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer func() { s.Close(); srv.Close() }()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("x-request-id") != "req_"+key {
		t.Fatalf("status %d, x-request-id %q", resp.StatusCode, resp.Header.Get("x-request-id"))
	}
	var c struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("body %s: %v", body, err)
	}
	if strings.Contains(string(body), key) || !strings.Contains(c.Choices[0].Message.Content, "(key "+key+")") {
		t.Errorf("body %s: want the key JSON-escaped only", body)
	}
}
