package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
)

// startFake runs the fake upstream behind a real HTTP server.
func startFake(t *testing.T, cfg fakeupstream.Config) (*fakeupstream.Server, string) {
	t.Helper()
	fake, err := fakeupstream.New(cfg)
	if err != nil {
		t.Fatalf("fakeupstream.New: %v", err)
	}
	ts := httptest.NewServer(fake.Handler())
	t.Cleanup(func() {
		fake.Close()
		ts.Close()
	})
	return fake, ts.URL + "/v1"
}

// chatWithFaults calls c with an X-Fake-Faults header, through a transport
// that adds it.
type faultHeader struct {
	spec string
	next http.RoundTripper
}

func (f faultHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Fake-Faults", f.spec)
	r.Header.Set("X-Fake-Key", fmt.Sprint(time.Now().UnixNano()))
	return f.next.RoundTrip(r)
}

func withFaults(c *Client, spec string) *Client {
	cp := *c
	hc := *c.http
	hc.Transport = faultHeader{spec: spec, next: c.transport}
	cp.http = &hc
	return &cp
}

// diffJSON lists the paths where a and b differ.
func diffJSON(path string, a, b any) []string {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v != %v", path, a, b)}
		}
		keys := map[string]bool{}
		for k := range av {
			keys[k] = true
		}
		for k := range bv {
			keys[k] = true
		}
		var names []string
		for k := range keys {
			names = append(names, k)
		}
		sort.Strings(names)
		var out []string
		for _, k := range names {
			x, okA := av[k]
			y, okB := bv[k]
			switch {
			case !okA:
				out = append(out, fmt.Sprintf("%s.%s: missing in the assembled stream (plain: %v)", path, k, y))
			case !okB:
				out = append(out, fmt.Sprintf("%s.%s: only in the assembled stream (%v)", path, k, x))
			default:
				out = append(out, diffJSON(path+"."+k, x, y)...)
			}
		}
		return out
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return []string{fmt.Sprintf("%s: %v != %v", path, a, b)}
		}
		var out []string
		for i := range av {
			out = append(out, diffJSON(fmt.Sprintf("%s[%d]", path, i), av[i], bv[i])...)
		}
		return out
	}
	if !reflect.DeepEqual(a, b) {
		return []string{fmt.Sprintf("%s: %v != %v", path, a, b)}
	}
	return nil
}

func decodeAny(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("body %s: %v", b, err)
	}
	return v
}

// TestStreamAssemblesThePlainBody sends the same request to the fake
// streaming and not, and compares the assembled chat.completion with the
// plain body field by field, for several shapes of answer.
func TestStreamAssemblesThePlainBody(t *testing.T) {
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	_, url := startFake(t, fakeupstream.Config{StableIDs: true, Now: func() time.Time { return clock }})
	streamed := newClient(t, Config{BaseURL: url})
	plain := newClient(t, Config{BaseURL: url, DisableStream: true})

	tools := []any{map[string]any{"type": "function", "function": map[string]any{"name": "lookup", "parameters": map[string]any{"type": "object"}}}}
	cases := []struct {
		name   string
		extra  map[string]any
		faults string
		check  func(t *testing.T, body map[string]any)
	}{
		{name: "plain text"},
		{name: "n=2 interleaved", extra: map[string]any{"n": 2}},
		{name: "tool calls", extra: map[string]any{"tools": tools}, check: func(t *testing.T, b map[string]any) {
			msg := b["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)
			calls, _ := msg["tool_calls"].([]any)
			if len(calls) != 1 || msg["content"] != nil {
				t.Errorf("message = %v, want one tool call and null content", msg)
			}
		}},
		{name: "tool calls n=2", extra: map[string]any{"tools": tools, "n": 2}},
		{name: "logprobs", extra: map[string]any{"logprobs": true}, check: func(t *testing.T, b map[string]any) {
			lp := b["choices"].([]any)[0].(map[string]any)["logprobs"].(map[string]any)
			if c, _ := lp["content"].([]any); len(c) < 2 {
				t.Errorf("logprobs = %v, want several content tokens", lp)
			}
		}},
		{name: "refusal with logprobs", faults: "refusal", extra: map[string]any{"logprobs": true}, check: func(t *testing.T, b map[string]any) {
			msg := b["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)
			if msg["refusal"] == nil || msg["content"] != nil {
				t.Errorf("message = %v, want a refusal and null content", msg)
			}
		}},
		{name: "unknown fields", faults: "extras", extra: map[string]any{"n": 2}, check: func(t *testing.T, b map[string]any) {
			ch := b["choices"].([]any)[1].(map[string]any)
			if b["x_fake_trace"] == nil || ch["content_filter_results"] == nil || ch["message"].(map[string]any)["reasoning_content"] == nil {
				t.Errorf("body = %v, want the unknown fields at every level", b)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": "gpt-4o", "messages": []any{map[string]any{"role": "user", "content": "say hello to the whole wide world " + tc.name}}}
			for k, v := range tc.extra {
				req[k] = v
			}
			body, _ := json.Marshal(req)
			sc, pc := streamed, plain
			if tc.faults != "" {
				sc, pc = withFaults(streamed, tc.faults), withFaults(plain, tc.faults)
			}
			sr, err := sc.Chat(t.Context(), body)
			if err != nil {
				t.Fatalf("streamed: %v", err)
			}
			pr, err := pc.Chat(t.Context(), body)
			if err != nil {
				t.Fatalf("plain: %v", err)
			}
			if !sr.Streamed || pr.Streamed {
				t.Fatalf("Streamed = %v / %v, want true / false", sr.Streamed, pr.Streamed)
			}
			if d := diffJSON("$", decodeAny(t, sr.Body), decodeAny(t, pr.Body)); len(d) > 0 {
				t.Errorf("assembled stream differs from the plain body:\n%s\nstream: %s\nplain:  %s", strings.Join(d, "\n"), sr.Body, pr.Body)
			}
			if sr.Usage != pr.Usage || sr.Usage.Estimated || sr.Model != pr.Model {
				t.Errorf("usage/model = %+v %q, want %+v %q", sr.Usage, sr.Model, pr.Usage, pr.Model)
			}
			if tc.check != nil {
				tc.check(t, decodeAny(t, sr.Body).(map[string]any))
			}
		})
	}
}

// sse serves a fixed stream of data events.
func sse(t *testing.T, events ...string) string {
	t.Helper()
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, e := range events {
			_, _ = io.WriteString(w, e+"\n\n")
		}
	})
	return srv.URL
}

func TestStreamWithoutUsageIsEstimated(t *testing.T) {
	url := sse(t,
		`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"abcdefgh"},"finish_reason":null}]}`,
		`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
		`data: [DONE]`)
	c := newClient(t, Config{BaseURL: url})
	resp, err := c.Chat(t.Context(), []byte(requestBody))
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if !resp.Usage.Estimated || resp.Usage.CompletionTokens != 2 || resp.Usage.PromptTokens <= 0 ||
		resp.Usage.TotalTokens != resp.Usage.PromptTokens+2 {
		t.Errorf("usage = %+v, want an estimate marked estimated", resp.Usage)
	}
	if strings.Contains(string(resp.Body), "usage") {
		t.Errorf("body %s carries a usage the provider never sent", resp.Body)
	}
}

func TestStreamSendsStreamOptions(t *testing.T) {
	var got map[string]any
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = nil
		_ = json.Unmarshal(b, &got)
		_, _ = io.WriteString(w, completionJSON) // a server that ignores stream: read as plain JSON
	})
	c := newClient(t, Config{BaseURL: srv.URL})
	body := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"x":1}}`
	if _, err := c.Chat(t.Context(), []byte(body)); err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if got["stream"] != true || !reflect.DeepEqual(got["stream_options"], map[string]any{"include_usage": true, "x": float64(1)}) {
		t.Errorf("wire body = %v, want stream true and include_usage", got)
	}
	c = newClient(t, Config{BaseURL: srv.URL, NoStreamModels: []string{"m"}})
	if _, err := c.Chat(t.Context(), []byte(`{"model":"m","messages":[]}`)); err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if _, ok := got["stream"]; ok {
		t.Errorf("wire body for a no-stream model = %v, want no stream", got)
	}
}

// TestStreamFaults: a stall and a cut are retried transport failures of
// their own kinds; an error event is an *Error with the status it names;
// a long answer that keeps streaming outlives the first-byte timeout.
func TestStreamFaults(t *testing.T) {
	_, url := startFake(t, fakeupstream.Config{})
	fast := newClient(t, Config{BaseURL: url, FirstByteTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	body := []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"one two three four five six seven eight"}]}`)
	// The fake loads its tokenizer on its first request (about a second
	// under -race): load it before timing anything.
	if _, err := newClient(t, Config{BaseURL: url}).Chat(t.Context(), body); err != nil {
		t.Fatalf("warm-up: %v", err)
	}

	t.Run("stall", func(t *testing.T) {
		start := time.Now()
		_, err := withFaults(fast, "stall").Chat(t.Context(), body)
		assertKind(t, err, KindStreamStall, "read response")
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("stall noticed after %s, want about the idle timeout", d)
		}
	})
	t.Run("cut", func(t *testing.T) {
		_, err := withFaults(fast, "cut").Chat(t.Context(), body)
		assertKind(t, err, KindStreamCut, "read response")
	})
	for _, tc := range []struct {
		spec   string
		status int
		typ    string
	}{
		{"streamerror", 500, "server_error"},
		{"streamerror:429", 429, "requests"},
		{"streamerror:400", 400, "invalid_request_error"},
		{"streamerror:503", 503, "server_error"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			_, err := withFaults(fast, tc.spec).Chat(t.Context(), body)
			var e *Error
			if !errors.As(err, &e) || e.StatusCode != tc.status || e.Type != tc.typ || e.RequestID == "" {
				t.Fatalf("err = %#v, want an *Error %d %s with the request id", err, tc.status, tc.typ)
			}
		})
	}
	t.Run("generation longer than the first-byte timeout", func(t *testing.T) {
		// 13 tokens over 3 s: one every ~230 ms, a quarter of the idle
		// timeout, while the whole answer takes three first-byte timeouts.
		steady := newClient(t, Config{BaseURL: url, FirstByteTimeout: time.Second, IdleTimeout: time.Second})
		resp, err := withFaults(steady, "generate:3s").Chat(t.Context(), body)
		if err != nil || !resp.Streamed {
			t.Fatalf("streamed 3 s answer: %v", err)
		}
		plain := newClient(t, Config{BaseURL: url, ResponseHeaderTimeout: time.Second, DisableStream: true})
		_, err = withFaults(plain, "generate:3s").Chat(t.Context(), body)
		assertKind(t, err, KindHeaderTimeout, "await response")
	})
	t.Run("a model thinking longer than the first-byte and idle timeouts", func(t *testing.T) {
		// A reasoning model's stream is silent after its headers until it
		// has thought: 1.5 s, five times each 300 ms timeout. Only the
		// first-event timeout bounds that silence.
		resp, err := withFaults(fast, "think:1500ms").Chat(t.Context(), body)
		if err != nil || !resp.Streamed {
			t.Fatalf("answer after 1.5 s of thinking: %v", err)
		}
		impatient := newClient(t, Config{BaseURL: url, FirstByteTimeout: time.Second, FirstEventTimeout: 300 * time.Millisecond})
		start := time.Now()
		_, err = withFaults(impatient, "think:3s").Chat(t.Context(), body)
		assertKind(t, err, KindStreamStall, "read response")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("silent first event noticed after %s, want about the first-event timeout", d)
		}
	})
}

func TestErrorEventStatus(t *testing.T) {
	for data, want := range map[string]int{
		`{"error":{"message":"x","type":"server_error","param":null,"code":null}}`:          500,
		`{"error":{"message":"x","type":"insufficient_quota","code":"insufficient_quota"}}`: 429,
		`{"error":{"message":"x","type":"BadRequestError","code":400}}`:                     400,
		`{"error":{"code":"429","message":"Azure"}}`:                                        429,
		`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`:       529,
		`{"object":"error","message":"x","type":"x","code":503}`:                            503,
		`{"error":"text"}`: 500,
	} {
		if got := errorEventStatus([]byte(data)); got != want {
			t.Errorf("errorEventStatus(%s) = %d, want %d", data, got, want)
		}
	}
}

func TestAssemblerKeepsEveryField(t *testing.T) {
	a := newAssembler()
	for _, c := range []string{
		`{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","service_tier":null,"obfuscation":"xx","choices":[{"index":1,"delta":{"role":"assistant","content":null,"function_call":{"name":"f","arguments":""}},"logprobs":null,"finish_reason":null}]}`,
		`{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","service_tier":"flex","choices":[{"index":1,"delta":{"function_call":{"arguments":"{\"a\":"}},"finish_reason":null}]}`,
		`{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"hi","audio":{"id":"a1"}},"finish_reason":null}]}`,
		`{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":1,"delta":{"function_call":{"arguments":"1}"}},"finish_reason":"function_call"},{"index":0,"delta":{"content":" there"},"finish_reason":"stop","x_choice":{"k":1}}]}`,
		`{"id":"c","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`,
	} {
		if err := a.add([]byte(c)); err != nil {
			t.Fatalf("add: %v", err)
		}
	}
	out, err := a.completion()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"c","object":"chat.completion","created":7,"model":"m","choices":[` +
		`{"index":0,"message":{"role":"assistant","content":"hi there","audio":{"id":"a1"}},"logprobs":null,"finish_reason":"stop","x_choice":{"k":1}},` +
		`{"index":1,"message":{"role":"assistant","content":null,"function_call":{"name":"f","arguments":"{\"a\":1}"}},"logprobs":null,"finish_reason":"function_call"}],` +
		`"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"service_tier":"flex"}`
	if d := diffJSON("$", decodeAny(t, out), decodeAny(t, []byte(want))); len(d) > 0 {
		t.Errorf("assembled %s\nwant      %s\n%s", out, want, strings.Join(d, "\n"))
	}
	if _, err := decodeCompletion(out); err != nil {
		t.Errorf("decodeCompletion: %v", err)
	}
	if err := newAssembler().add([]byte(`{"choices":[{"index":100000}]}`)); err == nil {
		t.Error("a choice index of 100000 was accepted")
	}
}

var _ = jobs.Usage{}
