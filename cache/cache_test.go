package cache_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/llmq/llmq/cache"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/upstream"
)

func TestHashNormalises(t *testing.T) {
	base := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_tokens":16}`
	h0, err := cache.Hash([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"key order":        `{"max_tokens":16,"temperature":1,"messages":[{"content":"hi","role":"user"}],"model":"gpt-4o"}`,
		"number form":      `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1.0,"max_tokens":16e0}`,
		"whitespace":       "{ \"model\": \"gpt-4o\",\n \"messages\": [ {\"role\":\"user\", \"content\":\"hi\"} ], \"temperature\": 1, \"max_tokens\": 16 }",
		"user field":       `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_tokens":16,"user":"u-42"}`,
		"metadata + store": `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_tokens":16,"metadata":{"job":"x"},"store":true}`,
	} {
		if h, err := cache.Hash([]byte(body)); err != nil || h != h0 {
			t.Errorf("%s: hash %s (%v), want the same as the base request", name, h, err)
		}
	}
	for name, body := range map[string]string{
		"model":       `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_tokens":16}`,
		"content":     `{"model":"gpt-4o","messages":[{"role":"user","content":"hi "}],"temperature":1,"max_tokens":16}`,
		"role":        `{"model":"gpt-4o","messages":[{"role":"system","content":"hi"}],"temperature":1,"max_tokens":16}`,
		"temperature": `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"max_tokens":16}`,
		"max_tokens":  `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_tokens":17}`,
		"new param":   `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_tokens":16,"seed":7}`,
	} {
		if h, err := cache.Hash([]byte(body)); err != nil || h == h0 {
			t.Errorf("%s differs but hashes the same (%v)", name, err)
		}
	}
	if _, err := cache.Hash([]byte(`[1,2]`)); err == nil {
		t.Error("a JSON array hashed without error")
	}
}

func TestPutGet(t *testing.T) {
	env := llmqtest.Redis(t)
	ctx := context.Background()
	c := cache.New(env.Client, env.Prefix, 90*time.Second)
	req := []byte(`{"model":"m","messages":[{"role":"user","content":"q"}]}`)
	if _, err := c.Get(ctx, req); !errors.Is(err, cache.ErrMiss) {
		t.Fatalf("Get before Put = %v, want ErrMiss", err)
	}
	e := cache.Entry{Model: "m-2024", Body: json.RawMessage(`{"object":"chat.completion","choices":[{}]}`), RequestID: "req_1", StoredAt: time.Unix(1700000000, 0).UTC()}
	if err := c.Put(ctx, req, e); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, []byte(`{"messages":[{"content":"q","role":"user"}],"model":"m","user":"other"}`))
	if err != nil || got.Model != e.Model || string(got.Body) != string(e.Body) || got.RequestID != "req_1" || !got.StoredAt.Equal(e.StoredAt) {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, e)
	}
	key, _ := c.Key(req)
	if ttl := env.Client.PTTL(ctx, key).Val(); ttl <= 80*time.Second || ttl > 90*time.Second {
		t.Errorf("entry TTL %v, want about 90s", ttl)
	}
	if err := env.Client.Set(ctx, key, "not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, req); err == nil || errors.Is(err, cache.ErrMiss) {
		t.Errorf("corrupt entry: %v, want an error that is not a miss", err)
	}
}

// A static response is a chat.completion body the upstream client itself
// accepts.
func TestStaticIsAValidCompletion(t *testing.T) {
	now := time.Unix(1700000000, 0)
	body := cache.Static("chatcmpl-static-j1", "gpt-4o", "Service busy: \"try later\".", now)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	cl, err := upstream.New(upstream.Config{BaseURL: srv.URL + "/v1", Key: upstream.StaticKey("sk-x")})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Chat(context.Background(), []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}`))
	if err != nil {
		t.Fatalf("the upstream client rejects the static body %s: %v", body, err)
	}
	var parsed struct {
		ID, Object string
		Created    int64
		Choices    []struct {
			Message      struct{ Role, Content string }
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.Unmarshal(body, &parsed); err != nil {
		t.Fatal(err)
	}
	if resp.Model != "gpt-4o" || parsed.Object != "chat.completion" || parsed.Created != now.Unix() || parsed.ID != "chatcmpl-static-j1" ||
		len(parsed.Choices) != 1 || parsed.Choices[0].Message.Content != "Service busy: \"try later\"." ||
		parsed.Choices[0].Message.Role != "assistant" || parsed.Choices[0].FinishReason != "stop" {
		t.Errorf("static body %s", body)
	}
}
