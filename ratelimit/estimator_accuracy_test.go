package ratelimit_test

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/tiktoken-go/tokenizer"

	"github.com/llmq/llmq/jobs"
)

// The budget charges what jobs.Estimator says a prompt costs, so its error is
// the budget's error. The fake upstream counts with the same Estimator, so
// comparing against it proves nothing; this file compares instead with the
// reference count of OpenAI's chat format: tiktoken's BPE (the same ranks,
// embedded by tiktoken-go) applied the way OpenAI's cookbook counts
// ("How to count tokens with tiktoken": num_tokens_from_messages and
// num_tokens_for_tools, which the cookbook checks against the API's
// usage.prompt_tokens).

// refEncoding maps the corpus's models to their tiktoken encoding.
var refEncoding = map[string]tokenizer.Encoding{
	"gpt-4o-mini": tokenizer.O200kBase,
	"gpt-4o":      tokenizer.O200kBase,
	"gpt-4":       tokenizer.Cl100kBase,
}

// refMessage is a chat message as the reference reads it.
type refMessage struct {
	Role    string          `json:"role"`
	Name    string          `json:"name,omitempty"`
	Content json.RawMessage `json:"content"`
}

// refTool is a function tool as the reference reads it.
type refTool struct {
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Parameters  struct {
			Properties map[string]struct {
				Type        string   `json:"type"`
				Description string   `json:"description"`
				Enum        []string `json:"enum"`
			} `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

// referenceTokens counts body's prompt tokens the way the cookbook does:
// 3 per message + its values' tokens (+1 for a name), 3 to prime the reply,
// and for tools 7 per function (10 on cl100k) + "name:description", 3 once
// for the properties, 3 per property + "key:type:description", enums -3 + 3
// and the value per item, 12 at the end. Multi-part text content is counted
// as its parts' text joined; a low-detail image part is 85 tokens.
func referenceTokens(t *testing.T, body string) int {
	t.Helper()
	var req struct {
		Model    string       `json:"model"`
		Messages []refMessage `json:"messages"`
		Tools    []refTool    `json:"tools"`
	}
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatalf("corpus body: %v", err)
	}
	enc, ok := refEncoding[req.Model]
	if !ok {
		t.Fatalf("corpus model %q has no reference encoding", req.Model)
	}
	codec, err := tokenizer.Get(enc)
	if err != nil {
		t.Fatal(err)
	}
	count := func(s string) int {
		ids, _, err := codec.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		return len(ids)
	}
	n := 3
	for _, m := range req.Messages {
		n += 3 + count(m.Role)
		if m.Name != "" {
			n += 1 + count(m.Name)
		}
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			n += count(s)
			continue
		}
		var parts []jobs.ContentPart
		if err := json.Unmarshal(m.Content, &parts); err != nil {
			t.Fatalf("corpus content: %v", err)
		}
		var text strings.Builder
		for _, p := range parts {
			switch p.Type {
			case "text":
				text.WriteString(p.Text)
			case "image_url":
				n += 85 // only detail "low" is in the corpus: a flat 85
			}
		}
		n += count(text.String())
	}
	if len(req.Tools) == 0 {
		return n
	}
	funcInit := 7
	if enc == tokenizer.Cl100kBase {
		funcInit = 10
	}
	for i, tool := range req.Tools {
		f := tool.Function
		n += funcInit + count(f.Name+":"+strings.TrimSuffix(f.Description, "."))
		if len(f.Parameters.Properties) == 0 {
			continue
		}
		n += 3
		for _, key := range propertyOrder(t, body, i) {
			p := f.Parameters.Properties[key]
			n += 3
			if len(p.Enum) > 0 {
				n -= 3
				for _, item := range p.Enum {
					n += 3 + count(item)
				}
			}
			n += count(key + ":" + p.Type + ":" + strings.TrimSuffix(p.Description, "."))
		}
	}
	return n + 12
}

// propertyOrder returns the property names of tool i in body order (the
// count does not depend on it, but a stable order keeps failures readable).
func propertyOrder(t *testing.T, body string, i int) []string {
	t.Helper()
	var raw struct {
		Tools []struct {
			Function struct {
				Parameters struct {
					Properties json.RawMessage `json:"properties"`
				} `json:"parameters"`
			} `json:"function"`
		} `json:"tools"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(raw.Tools[i].Function.Parameters.Properties)))
	var keys []string
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch v := tok.(type) {
		case json.Delim:
			if v == '{' || v == '[' {
				depth++
			} else {
				depth--
			}
		case string:
			if depth == 1 {
				keys = append(keys, v)
				// skip the property's value
				var skip json.RawMessage
				if err := dec.Decode(&skip); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return keys
}

// estimatorCase is one corpus entry.
type estimatorCase struct {
	name, kind, body string
}

func msgs(model string, extra string, m ...map[string]any) string {
	b, _ := json.Marshal(m)
	return fmt.Sprintf(`{"model":%q,"messages":%s%s,"max_tokens":64}`, model, b, extra)
}

func estimatorCorpus() []estimatorCase {
	long := strings.Repeat("The quick brown fox jumps over the lazy dog; numbers 12345 and 3.14159 follow. ", 40)
	code := "func main() {\n\tfor i := 0; i < 10; i++ {\n\t\tfmt.Printf(\"%d\\n\", i*i)\n\t}\n}\n"
	weather := `[{"type":"function","function":{"name":"get_current_weather","description":"Get the current weather in a given location","parameters":{"type":"object","properties":{"location":{"type":"string","description":"The city and state, e.g. San Francisco, CA"},"unit":{"type":"string","description":"The unit of temperature to return","enum":["celsius","fahrenheit"]}},"required":["location"]}}}]`
	twoTools := `[{"type":"function","function":{"name":"search_orders","description":"Find a customer's orders by status.","parameters":{"type":"object","properties":{"customer_id":{"type":"string","description":"The customer's id."},"status":{"type":"string","description":"Order status","enum":["open","shipped","cancelled","returned"]},"limit":{"type":"integer","description":"Maximum orders to return"}}}}},{"type":"function","function":{"name":"refund","description":"Refund an order in full","parameters":{"type":"object","properties":{"order_id":{"type":"string","description":"The order to refund"}}}}}]`
	var out []estimatorCase
	for _, model := range []string{"gpt-4o-mini", "gpt-4"} {
		add := func(name, kind, body string) {
			out = append(out, estimatorCase{model + "/" + name, kind, body})
		}
		add("short string", "messages", msgs(model, "", map[string]any{"role": "user", "content": "Hello, world!"}))
		add("system+user", "messages", msgs(model, "",
			map[string]any{"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
			map[string]any{"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}))
		add("names (few-shot)", "messages", msgs(model, "",
			map[string]any{"role": "system", "content": "Translate jargon."},
			map[string]any{"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
			map[string]any{"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
			map[string]any{"role": "user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."}))
		add("long paragraph", "messages", msgs(model, "", map[string]any{"role": "user", "content": long}))
		add("code", "messages", msgs(model, "", map[string]any{"role": "user", "content": "Explain this Go code:\n" + code}))
		add("non-English + emoji", "messages", msgs(model, "",
			map[string]any{"role": "user", "content": "Résumé in français, 日本語のテキスト, Ελληνικά, 😀🚀 — and Ünïcödé."}))
		add("multi-turn", "messages", msgs(model, "",
			map[string]any{"role": "system", "content": "Be brief."},
			map[string]any{"role": "user", "content": "What is the capital of France?"},
			map[string]any{"role": "assistant", "content": "Paris."},
			map[string]any{"role": "user", "content": "And of Japan? Answer in one word."}))
		add("multi-part text", "multi-part", msgs(model, "", map[string]any{"role": "user", "content": []map[string]any{
			{"type": "text", "text": "Summarise the following two notes. "},
			{"type": "text", "text": "Note one: the deploy failed at 03:12 UTC because the disk was full."}}}))
		add("multi-part text+low image", "multi-part", msgs(model, "", map[string]any{"role": "user", "content": []map[string]any{
			{"type": "text", "text": "What is in this picture?"},
			{"type": "image_url", "image_url": map[string]any{"url": "https://example.com/cat.png", "detail": "low"}}}}))
		add("one tool", "tools", msgs(model, `,"tools":`+weather,
			map[string]any{"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
			map[string]any{"role": "user", "content": "What's the weather like in San Francisco?"}))
		add("two tools", "tools", msgs(model, `,"tools":`+twoTools,
			map[string]any{"role": "user", "content": "Refund every cancelled order of customer c-42."}))
	}
	return out
}

// TestEstimatorAccuracy measures jobs.Estimator's prompt tokens against the
// reference count for a corpus of chat requests and prints mean and max
// error per kind (go test ./ratelimit -run Estimator -v). Plain messages
// and names must be exact; multi-part text within 5%; tools within 30% and
// only over (the estimator counts the tools' JSON, longer than OpenAI's
// rendering of them), so the budget never under-charges them.
func TestEstimatorAccuracy(t *testing.T) {
	est := jobs.NewEstimator(1024)
	type agg struct {
		n         int
		sum, max  float64
		minSigned float64
	}
	kinds := map[string]*agg{}
	order := []string{}
	all := &agg{}
	for _, c := range estimatorCorpus() {
		var req jobs.Request
		if err := json.Unmarshal([]byte(c.body), &req); err != nil {
			t.Fatal(err)
		}
		got, want := est.PromptTokens(&req), referenceTokens(t, c.body)
		signed := 100 * float64(got-want) / float64(want)
		t.Logf("%-40s estimate %5d  reference %5d  error %+6.1f%%", c.name, got, want, signed)
		a := kinds[c.kind]
		if a == nil {
			a = &agg{minSigned: math.Inf(1)}
			kinds[c.kind] = a
			order = append(order, c.kind)
		}
		a.n++
		a.sum += math.Abs(signed)
		a.max = max(a.max, math.Abs(signed))
		a.minSigned = min(a.minSigned, signed)
		all.n++
		all.sum += math.Abs(signed)
		all.max = max(all.max, math.Abs(signed))
	}
	t.Logf("estimator vs reference, all        (%2d prompts): mean |error| %5.1f%%, max |error| %5.1f%%", all.n, all.sum/float64(all.n), all.max)
	bound := map[string]float64{"messages": 0, "multi-part": 5, "tools": 30}
	for _, k := range order {
		a := kinds[k]
		t.Logf("estimator vs reference, %-10s (%2d prompts): mean |error| %5.1f%%, max |error| %5.1f%%", k, a.n, a.sum/float64(a.n), a.max)
		if a.max > bound[k] {
			t.Errorf("%s: max error %.1f%% exceeds the bound %.0f%%", k, a.max, bound[k])
		}
		if a.minSigned < 0 && k == "tools" {
			t.Errorf("tools: the estimate is under the reference (%.1f%%): the budget would under-charge", a.minSigned)
		}
	}
}
