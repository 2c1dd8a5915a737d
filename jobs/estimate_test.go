package jobs

import (
	"encoding/json"
	"testing"
)

func req(t *testing.T, body string) *Request {
	t.Helper()
	var r Request
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func TestEstimate(t *testing.T) {
	e := NewEstimator(100)
	cases := []struct {
		name               string
		body               string
		prompt, completion int
	}{
		// "Hello, world!" is 4 tokens in o200k_base: 3 (message) + 1 (role "user") + 4 + 3 (reply).
		{"string content", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":10}`, 11, 10},
		{"default completion, n", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],"n":3}`, 11, 300},
		{"max_completion_tokens wins", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":5,"max_completion_tokens":7,"n":2}`, 11, 14},
		{"multipart text+low image", `{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"Hello, world!"},{"type":"image_url","image_url":{"url":"u","detail":"low"}}]}],"max_tokens":1}`, 11 + 85, 1},
		{"unknown model chars/4", `{"model":"llama-3","messages":[{"role":"user","content":"abcdefgh"}],"max_tokens":1}`, 3 + 1 + 2 + 3, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.Estimate(req(t, tc.body))
			if c.PromptTokens != tc.prompt || c.CompletionTokens != tc.completion {
				t.Errorf("Estimate = %+v, want prompt %d completion %d", c, tc.prompt, tc.completion)
			}
		})
	}
	plain := e.Estimate(req(t, `{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}`)).PromptTokens
	withTools := e.Estimate(req(t, `{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}`)).PromptTokens
	if withTools <= plain+5 {
		t.Errorf("tools must add their definition's tokens: %d vs %d", withTools, plain)
	}
	cl := e.Estimate(req(t, `{"model":"gpt-4","messages":[{"role":"user","content":"Hello, world!"}]}`)).PromptTokens
	if cl != 11 {
		t.Errorf("cl100k estimate = %d, want 11", cl)
	}
}
