package jobs

import (
	"encoding/json"
	"errors"
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
	e := NewEstimator(100, WithMethod(MethodTokenizer))
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

// cookbookMessages are the example messages of OpenAI's cookbook "How to
// count tokens with tiktoken", for which the cookbook prints "129 prompt
// tokens counted by the OpenAI API" for gpt-3.5-turbo and gpt-4-0613.
const cookbookMessages = `[
 {"role":"system","content":"You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
 {"role":"system","name":"example_user","content":"New synergies will help drive top-line growth."},
 {"role":"system","name":"example_assistant","content":"Things working well together will increase revenue."},
 {"role":"system","name":"example_user","content":"Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
 {"role":"system","name":"example_assistant","content":"Let's talk later when we're less busy about how to do better."},
 {"role":"user","content":"This late pivot means we don't have time to boil the ocean for the client deliverable."}]`

// Issue 15: the budget's default estimate counts characters, the way
// OpenAI's rate-limit guide says the limiter does ("the estimated number of
// tokens based on the character count of your request" together with
// max_tokens); the tokenizer stays for the billed-usage estimate.
func TestEstimateChars(t *testing.T) {
	chars := NewEstimator(100)
	if chars.Method() != MethodChars {
		t.Fatalf("default method %q, want %q", chars.Method(), MethodChars)
	}
	tok := NewEstimator(100, WithMethod(MethodTokenizer))
	cases := []struct {
		name               string
		body               string
		prompt, completion int
	}{
		// 13 characters: ceil(13/4) = 4, + 4 for the message.
		{"string content", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":10}`, 8, 10},
		// Characters are code points, not bytes: "héllo wörld" is 11.
		{"unicode", `{"model":"gpt-4o","messages":[{"role":"user","content":"héllo wörld"}],"max_tokens":1}`, 3 + 4, 1},
		{"max_completion_tokens × n", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":5,"max_completion_tokens":7,"n":3}`, 8, 21},
		{"default completion", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}]}`, 8, 100},
		// The name's characters join the content's: 13 + 4 = 17 → 5, + 4.
		{"name", `{"model":"gpt-4o","messages":[{"role":"user","name":"anna","content":"Hello, world!"}],"max_tokens":1}`, 9, 1},
		// Images at their documented flat cost: detail "low" 85 tokens; a
		// 1024×1024 image in high detail 765 (85 + 4 tiles × 170).
		{"low image", `{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"Hello, world!"},{"type":"image_url","image_url":{"url":"https://x/a.png","detail":"low"}}]}],"max_tokens":1}`, 8 + 85, 1},
		{"high image", `{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}],"max_tokens":1}`, 4 + 765, 1},
		// Tool definitions: their JSON's characters / 4 (86 → 22).
		{"tools", `{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"max_tokens":1}`, 1 + 4 + 22, 1},
		// A tool call and its answer count their JSON and id.
		{"tool call", `{"model":"gpt-4o","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"42"}],"max_tokens":1}`, 18 + 4 + 1 + 4, 1},
		// The cookbook's example: 151 by characters (the per-message
		// lengths with names are 99, 58, 68, 112, 78, 86) where the
		// tokenizer and the API count 129 (gpt-4) or 124 (gpt-4o).
		{"cookbook example", `{"model":"gpt-4","messages":` + cookbookMessages + `,"max_tokens":1}`, 151, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := chars.Estimate(req(t, tc.body))
			if c.PromptTokens != tc.prompt || c.CompletionTokens != tc.completion {
				t.Errorf("Estimate = %+v, want prompt %d completion %d", c, tc.prompt, tc.completion)
			}
		})
	}
	for model, want := range map[string]int{"gpt-4": 129, "gpt-4o": 124} {
		r := req(t, `{"model":"`+model+`","messages":`+cookbookMessages+`}`)
		if got := tok.Estimate(r).PromptTokens; got != want {
			t.Errorf("%s: tokenizer estimate of the cookbook example = %d, want the documented %d", model, got, want)
		}
	}
	r := req(t, `{"model":"gpt-4","messages":`+cookbookMessages+`}`)
	if got := chars.PromptTokens(r); got != 129 {
		t.Errorf("PromptTokens (billed usage) with the chars method = %d, want the tokenizer's 129", got)
	}
}

func TestParseMethod(t *testing.T) {
	for in, want := range map[string]Method{"": MethodChars, "chars": MethodChars, "tokenizer": MethodTokenizer} {
		if got, err := ParseMethod(in); err != nil || got != want {
			t.Errorf("ParseMethod(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMethod("bytes"); !errors.Is(err, ErrMethod) {
		t.Errorf("ParseMethod(bytes) err = %v, want ErrMethod", err)
	}
}
