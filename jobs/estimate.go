package jobs

import (
	"encoding/json"
	"strings"
	"sync"

	"github.com/tiktoken-go/tokenizer"
)

// Token overheads of the chat format, as OpenAI's cookbook counts them for
// current models: every message costs 3 tokens beyond its content (4 with a
// name), and every reply is primed with 3.
const (
	tokensPerMessage = 3
	tokensPerName    = 1
	tokensPerReply   = 3
	// Image parts are charged by size; without fetching the image we charge
	// a 1024x1024 high-detail tile grid, or the flat 85 of detail "low".
	tokensPerImage    = 765
	tokensPerLowImage = 85
)

// Cost is what a request is charged against a tokens-per-minute budget at
// request time, the way OpenAI counts it: the prompt estimate plus the
// completion limit times n.
type Cost struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// Total returns prompt plus completion tokens.
func (c Cost) Total() int { return c.PromptTokens + c.CompletionTokens }

// Estimator estimates request costs offline. OpenAI model families use their
// tokenizer (o200k_base or cl100k_base, embedded in the binary); other models
// are estimated at one token per four characters. It is safe for concurrent
// use; the zero value is not, use NewEstimator.
type Estimator struct {
	defaultCompletion int

	mu     sync.Mutex
	codecs map[tokenizer.Encoding]tokenizer.Codec
}

// NewEstimator returns an Estimator that charges defaultCompletion tokens per
// choice for requests that set neither max_tokens nor max_completion_tokens.
func NewEstimator(defaultCompletion int) *Estimator {
	return &Estimator{defaultCompletion: defaultCompletion, codecs: map[tokenizer.Encoding]tokenizer.Codec{}}
}

// Estimate returns the cost of req.
func (e *Estimator) Estimate(req *Request) Cost {
	return Cost{
		PromptTokens:     e.PromptTokens(req),
		CompletionTokens: req.CompletionLimit(e.defaultCompletion) * req.Choices(),
	}
}

// PromptTokens estimates the prompt tokens of req: message contents, names,
// tool calls and tool definitions, plus the chat format's overhead.
func (e *Estimator) PromptTokens(req *Request) int {
	count := e.counter(req.Model)
	n := tokensPerReply
	for _, m := range req.Messages {
		n += tokensPerMessage + count(m.Role)
		if m.Name != "" {
			n += tokensPerName + count(m.Name)
		}
		n += e.contentTokens(count, m.Content)
		if len(m.ToolCalls) > 0 {
			n += count(string(m.ToolCalls))
		}
		if m.ToolCallID != "" {
			n += count(m.ToolCallID)
		}
	}
	if len(req.Tools) > 0 && string(req.Tools) != "null" {
		n += count(string(req.Tools))
	}
	if len(req.ResponseFormat) > 0 && string(req.ResponseFormat) != "null" {
		n += count(string(req.ResponseFormat))
	}
	return n
}

func (e *Estimator) contentTokens(count func(string) int, raw json.RawMessage) int {
	if len(raw) == 0 {
		return 0
	}
	switch raw[0] {
	case '"':
		var s string
		_ = json.Unmarshal(raw, &s)
		return count(s)
	case '[':
		var parts []ContentPart
		if err := json.Unmarshal(raw, &parts); err != nil {
			return count(string(raw))
		}
		n := 0
		for _, p := range parts {
			switch p.Type {
			case "text":
				n += count(p.Text)
			case "image_url":
				if p.ImageURL != nil && p.ImageURL.Detail == "low" {
					n += tokensPerLowImage
				} else {
					n += tokensPerImage
				}
			}
		}
		return n
	}
	return count(string(raw))
}

// counter returns the token counting function for model.
func (e *Estimator) counter(model string) func(string) int {
	enc, ok := encodingFor(model)
	if !ok {
		return charsOver4
	}
	codec := e.codec(enc)
	if codec == nil {
		return charsOver4
	}
	return func(s string) int {
		if s == "" {
			return 0
		}
		n, err := codec.Count(s)
		if err != nil {
			return charsOver4(s)
		}
		return n
	}
}

func (e *Estimator) codec(enc tokenizer.Encoding) tokenizer.Codec {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.codecs[enc]; ok {
		return c
	}
	c, err := tokenizer.Get(enc)
	if err != nil {
		c = nil
	}
	e.codecs[enc] = c
	return c
}

// charsOver4 is the estimate for models without a known tokenizer.
func charsOver4(s string) int { return (len(s) + 3) / 4 }

// encodingFor maps an OpenAI model name (or an Azure deployment named after
// one) to its tokenizer encoding.
func encodingFor(model string) (tokenizer.Encoding, bool) {
	m := strings.ToLower(model)
	m = strings.TrimPrefix(m, "ft:")
	for _, p := range []string{"gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss"} {
		if strings.HasPrefix(m, p) {
			return tokenizer.O200kBase, true
		}
	}
	for _, p := range []string{"gpt-4", "gpt-3.5", "gpt-35"} {
		if strings.HasPrefix(m, p) {
			return tokenizer.Cl100kBase, true
		}
	}
	return "", false
}
