package fakeupstream

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/llmq/llmq/jobs"
)

// wireOptions are the parts of a request the fake reads beyond
// jobs.Request: streaming, tools and logprobs.
type wireOptions struct {
	Stream       bool
	IncludeUsage bool
	Tools        []struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	ToolChoice json.RawMessage
	Logprobs   bool
}

// wantsTool reports whether the answer calls a tool: the request offers a
// function tool and tool_choice is not "none".
func (o wireOptions) wantsTool() (string, bool) {
	if string(o.ToolChoice) == `"none"` {
		return "", false
	}
	for _, t := range o.Tools {
		if t.Type == "function" && t.Function.Name != "" {
			return t.Function.Name, true
		}
	}
	return "", false
}

// answer is one generated answer, from which both the non-streaming body and
// the stream's chunks are written.
type answer struct {
	comp      completion
	logprobs  bool
	tokens    int // completion tokens per choice
	extras    bool
	reasoning string
}

// toolCall is a function call in a message.
type toolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// logprob is one token's log probability, as OpenAI writes it.
type logprob struct {
	Token       string  `json:"token"`
	Logprob     float64 `json:"logprob"`
	Bytes       []int   `json:"bytes"`
	TopLogprobs []any   `json:"top_logprobs"`
}

// refusalText is the refusal of a "refusal" fault.
const refusalText = "I'm sorry, but I can't help with that request."

// Extra fields a fault "extras" adds at each level of the answer: fields no
// OpenAI client type knows, to check that they pass through.
const (
	extraTopField    = "x_fake_trace"
	extraChoiceField = "content_filter_results"
	extraReasoning   = "reasoning_content"
)

// buildAnswer generates the answer to req. id and created are the
// completion's; fault may shape it (refusal, extras).
func (s *Server) buildAnswer(req *jobs.Request, opts wireOptions, fault Fault, id string, created int64, prompt int) *answer {
	perChoice := completionTokensPerChoice(req, req.CompletionLimit(s.cfg.DefaultCompletion))
	a := &answer{logprobs: opts.Logprobs, tokens: perChoice, extras: fault.Kind == FaultExtras}
	a.comp = completion{
		ID:                id,
		Object:            "chat.completion",
		Created:           created,
		Model:             req.Model,
		ServiceTier:       "default",
		SystemFingerprint: "fp_fake",
		Usage: usage{
			PromptTokens:     prompt,
			CompletionTokens: perChoice * req.Choices(),
			TotalTokens:      prompt + perChoice*req.Choices(),
		},
	}
	if a.extras {
		a.comp.Trace = "trace-" + id
		a.reasoning = "The user wants an echo; I will echo the message."
	}
	text := echo(req)
	tool, callsTool := opts.wantsTool()
	for i := range req.Choices() {
		c := choice{Index: i, Message: message{Role: "assistant"}, Logprobs: json.RawMessage("null"), FinishReason: "stop"}
		switch {
		case fault.Kind == FaultRefusal:
			r := refusalText
			c.Message.Refusal = &r
			if a.logprobs {
				c.Logprobs = mustMarshal(map[string]any{"content": nil, "refusal": logprobsOf(tokensOf(r, perChoice))})
			}
		case callsTool:
			args, _ := json.Marshal(map[string]string{"text": text})
			c.Message.ToolCalls = []toolCall{{ID: fmt.Sprintf("call_fake%d_%s", i, strings.TrimPrefix(id, "chatcmpl-")), Type: "function",
				Function: toolFunction{Name: tool, Arguments: string(args)}}}
			c.FinishReason = "tool_calls"
		default:
			content := text
			if i > 0 {
				content = fmt.Sprintf("%s (%d)", text, i+1)
			}
			c.Message.Content = &content
			if a.logprobs {
				c.Logprobs = mustMarshal(map[string]any{"content": logprobsOf(tokensOf(content, perChoice)), "refusal": nil})
			}
		}
		if a.extras {
			c.Message.ReasoningContent = a.reasoning
			c.ContentFilterResults = json.RawMessage(`{"hate":{"filtered":false,"severity":"safe"}}`)
		}
		a.comp.Choices = append(a.comp.Choices, c)
	}
	return a
}

// body is the non-streaming chat.completion.
func (a *answer) body() []byte {
	b, _ := json.Marshal(a.comp)
	return b
}

// chunkChoice is one choice of a chat.completion.chunk.
type chunkChoice struct {
	Index                int             `json:"index"`
	Delta                map[string]any  `json:"delta"`
	Logprobs             json.RawMessage `json:"logprobs"`
	FinishReason         *string         `json:"finish_reason"`
	ContentFilterResults json.RawMessage `json:"content_filter_results,omitempty"`
}

// chunk is a chat.completion.chunk.
type chunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	ServiceTier       string          `json:"service_tier"`
	SystemFingerprint string          `json:"system_fingerprint"`
	Choices           []chunkChoice   `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
	Trace             string          `json:"x_fake_trace,omitempty"`
}

// events returns, for each choice, the deltas of its stream in order: the
// role first, then reasoning, content, refusal or tool-call fragments, then
// the finish_reason.
func (a *answer) events() [][]chunkChoice {
	out := make([][]chunkChoice, len(a.comp.Choices))
	for i, c := range a.comp.Choices {
		m := c.Message
		first := map[string]any{"role": "assistant", "content": "", "refusal": nil}
		if len(m.ToolCalls) > 0 {
			first["content"] = nil
		}
		evs := []chunkChoice{{Index: i, Delta: first, Logprobs: json.RawMessage("null")}}
		add := func(delta map[string]any, lp json.RawMessage) {
			if lp == nil {
				lp = json.RawMessage("null")
			}
			evs = append(evs, chunkChoice{Index: i, Delta: delta, Logprobs: lp})
		}
		for _, p := range pieces(m.ReasoningContent) { // not counted in the pace
			add(map[string]any{extraReasoning: p}, nil)
		}
		if m.Content != nil {
			ps := tokensOf(*m.Content, a.tokens)
			lps := logprobsOf(ps)
			for j, p := range ps {
				var lp json.RawMessage
				if a.logprobs {
					lp = mustMarshal(map[string]any{"content": lps[j : j+1], "refusal": nil})
				}
				add(map[string]any{"content": p}, lp)
			}
		}
		if m.Refusal != nil {
			ps := tokensOf(*m.Refusal, a.tokens)
			lps := logprobsOf(ps)
			for j, p := range ps {
				var lp json.RawMessage
				if a.logprobs {
					lp = mustMarshal(map[string]any{"content": nil, "refusal": lps[j : j+1]})
				}
				add(map[string]any{"refusal": p}, lp)
			}
		}
		for j, tc := range m.ToolCalls {
			add(map[string]any{"tool_calls": []any{map[string]any{"index": j, "id": tc.ID, "type": tc.Type,
				"function": map[string]any{"name": tc.Function.Name, "arguments": ""}}}}, nil)
			for _, frag := range tokensOf(tc.Function.Arguments, a.tokens) {
				add(map[string]any{"tool_calls": []any{map[string]any{"index": j, "function": map[string]any{"arguments": frag}}}}, nil)
			}
		}
		fr := c.FinishReason
		evs = append(evs, chunkChoice{Index: i, Delta: map[string]any{}, Logprobs: json.RawMessage("null"), FinishReason: &fr,
			ContentFilterResults: c.ContentFilterResults})
		out[i] = evs
	}
	return out
}

// chunkOf wraps choices in a chunk of the answer.
func (a *answer) chunkOf(choices []chunkChoice, includeUsage bool) []byte {
	ch := chunk{ID: a.comp.ID, Object: "chat.completion.chunk", Created: a.comp.Created, Model: a.comp.Model,
		ServiceTier: a.comp.ServiceTier, SystemFingerprint: a.comp.SystemFingerprint, Choices: choices, Trace: a.comp.Trace}
	if includeUsage {
		ch.Usage = json.RawMessage("null")
	}
	b, _ := json.Marshal(ch)
	return b
}

// usageChunk is the last chunk with include_usage: no choices, the usage.
func (a *answer) usageChunk() []byte {
	ch := chunk{ID: a.comp.ID, Object: "chat.completion.chunk", Created: a.comp.Created, Model: a.comp.Model,
		ServiceTier: a.comp.ServiceTier, SystemFingerprint: a.comp.SystemFingerprint, Choices: []chunkChoice{},
		Usage: mustMarshal(a.comp.Usage), Trace: a.comp.Trace}
	b, _ := json.Marshal(ch)
	return b
}

// tokensOf splits text into the tokens the answer streams and reports
// logprobs for: words, the longest split in halves until there are n (the
// completion tokens of a choice), so a stream's pace follows its token count.
func tokensOf(text string, n int) []string {
	ps := pieces(text)
	for len(ps) < n {
		longest := 0
		for i, p := range ps {
			if len([]rune(p)) > len([]rune(ps[longest])) {
				longest = i
			}
		}
		r := []rune(ps[longest])
		if len(r) < 2 {
			break
		}
		half := len(r) / 2
		ps = append(ps[:longest], append([]string{string(r[:half]), string(r[half:])}, ps[longest+1:]...)...)
	}
	return ps
}

// pieces splits text into word tokens, each but the first with its leading
// space, the way a tokenizer streams it.
func pieces(text string) []string {
	var out []string
	start := 0
	for i := 1; i < len(text); i++ {
		if text[i] == ' ' && text[i-1] != ' ' {
			out = append(out, text[start:i])
			start = i
		}
	}
	if start < len(text) {
		out = append(out, text[start:])
	}
	return out
}

func logprobsOf(tokens []string) []logprob {
	out := make([]logprob, len(tokens))
	for i, t := range tokens {
		b := make([]int, len(t))
		for j := range len(t) {
			b[j] = int(t[j])
		}
		out[i] = logprob{Token: t, Logprob: -0.125 * float64(i%8+1), Bytes: b, TopLogprobs: []any{}}
	}
	return out
}

func mustMarshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain values are marshalled
	}
	return b
}

// stableID is the completion id of Config.StableIDs: a hash of the request
// body without its stream fields, so both modes of one request share it.
func stableID(body []byte) string {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) == nil {
		delete(top, "stream")
		delete(top, "stream_options")
		body, _ = json.Marshal(top)
	}
	sum := sha256.Sum256(body)
	return "chatcmpl-" + hex.EncodeToString(sum[:12])
}

// thinkTime is how long the model reasons before its first token: the
// fault's "think:D", else Config.ThinkTime.
func (s *Server) thinkTime(f Fault) time.Duration {
	if f.Kind == FaultThink {
		return f.Delay
	}
	return s.cfg.ThinkTime
}

// generationTime is how long the answer takes to generate: the fault's
// "generate:D", else Config.GenerationTime, else the completion tokens of
// one choice at Config.TokensPerSecond, else nothing.
func (s *Server) generationTime(f Fault, tokens int) time.Duration {
	switch {
	case f.Kind == FaultGenerate:
		return f.Delay
	case s.cfg.GenerationTime > 0:
		return s.cfg.GenerationTime
	case s.cfg.TokensPerSecond > 0:
		return time.Duration(float64(tokens) / s.cfg.TokensPerSecond * float64(time.Second))
	}
	return 0
}
