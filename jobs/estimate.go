package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

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

// Method is how Estimator.Estimate counts a prompt for the budget.
type Method string

// Estimate methods.
const (
	// MethodChars counts the prompt the way OpenAI's rate limiter does: its
	// rate-limit guide says the limit is "calculated as the maximum of
	// max_tokens and the estimated number of tokens based on the character
	// count of your request" (openai-cookbook, How_to_handle_rate_limits).
	// Per message, the characters (Unicode code points) of its text
	// content, name, tool_calls and tool_call_id, divided by 4 and rounded
	// up, plus 4; image parts at their documented flat cost (85 tokens for
	// detail "low", else 765: a 1024×1024 high-detail image); the
	// characters of the tools and response_format definitions / 4, rounded
	// up. The completion limit × n is added (a sum, never below the
	// documented maximum). The default for OpenAI-compatible upstreams.
	MethodChars Method = "chars"
	// MethodTokenizer counts the prompt with the model's tokenizer
	// (o200k_base or cl100k_base; characters/4 for unknown models) plus the
	// chat format's overhead, as OpenAI's cookbook counts billed prompt
	// tokens. About 20 % below MethodChars for English.
	MethodTokenizer Method = "tokenizer"
)

// DefaultMethod is the method of an Estimator built without WithMethod.
const DefaultMethod = MethodChars

// ErrMethod is returned (wrapped with the name) by ParseMethod for an
// unknown method.
var ErrMethod = errors.New("jobs: unknown estimate method")

// ParseMethod returns the method named s ("" = DefaultMethod).
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case "":
		return DefaultMethod, nil
	case MethodChars, MethodTokenizer:
		return m, nil
	}
	return "", fmt.Errorf("%w %q: want %q or %q", ErrMethod, s, MethodChars, MethodTokenizer)
}

// Characters per token and per-message overhead of MethodChars.
const (
	charsPerToken       = 4
	charsTokensPerEntry = 4
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

// Estimator estimates request costs offline: Estimate the cost charged to
// the budget (by its Method), PromptTokens the billed prompt tokens where a
// provider reports no usage. For the tokenizer, OpenAI model families use
// theirs (o200k_base or cl100k_base, embedded in the binary); other models
// are estimated at one token per four characters. It is safe for concurrent
// use; the zero value is not, use NewEstimator.
type Estimator struct {
	defaultCompletion int
	method            Method

	mu     sync.Mutex
	codecs map[tokenizer.Encoding]tokenizer.Codec
}

// Option configures an Estimator.
type Option func(*Estimator)

// WithMethod sets how Estimate counts prompts (default DefaultMethod).
func WithMethod(m Method) Option { return func(e *Estimator) { e.method = m } }

// NewEstimator returns an Estimator that charges defaultCompletion tokens per
// choice for requests that set neither max_tokens nor max_completion_tokens.
func NewEstimator(defaultCompletion int, opts ...Option) *Estimator {
	e := &Estimator{defaultCompletion: defaultCompletion, method: DefaultMethod, codecs: map[tokenizer.Encoding]tokenizer.Codec{}}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Method returns how Estimate counts prompts.
func (e *Estimator) Method() Method { return e.method }

// Estimate returns the cost of req as the budget charges it: the prompt
// counted by the Estimator's Method plus the completion limit times n.
func (e *Estimator) Estimate(req *Request) Cost {
	prompt := 0
	if e.method == MethodTokenizer {
		prompt = e.PromptTokens(req)
	} else {
		prompt = PromptChars(req)
	}
	return Cost{
		PromptTokens:     prompt,
		CompletionTokens: req.CompletionLimit(e.defaultCompletion) * req.Choices(),
	}
}

// PromptChars is MethodChars's prompt estimate of req (see MethodChars for
// exactly what counts).
func PromptChars(req *Request) int {
	n := 0
	for _, m := range req.Messages {
		chars, flat := contentChars(m.Content)
		chars += utf8.RuneCountInString(m.Name) + utf8.RuneCount(m.ToolCalls) + utf8.RuneCountInString(m.ToolCallID)
		n += ceilDiv(chars, charsPerToken) + charsTokensPerEntry + flat
	}
	if len(req.Tools) > 0 && string(req.Tools) != "null" {
		n += ceilDiv(utf8.RuneCount(req.Tools), charsPerToken)
	}
	if len(req.ResponseFormat) > 0 && string(req.ResponseFormat) != "null" {
		n += ceilDiv(utf8.RuneCount(req.ResponseFormat), charsPerToken)
	}
	return n
}

// contentChars returns the characters of a message content's text and the
// flat token cost of its images.
func contentChars(raw json.RawMessage) (chars, flat int) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, 0
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return utf8.RuneCountInString(s), 0
		}
	case '[':
		var parts []ContentPart
		if json.Unmarshal(raw, &parts) == nil {
			for _, p := range parts {
				switch p.Type {
				case "text":
					chars += utf8.RuneCountInString(p.Text)
				case "image_url":
					flat += imageTokens(p)
				}
			}
			return chars, flat
		}
	}
	return utf8.RuneCount(raw), 0
}

// imageTokens is the documented flat cost of an image part.
func imageTokens(p ContentPart) int {
	if p.ImageURL != nil && p.ImageURL.Detail == "low" {
		return tokensPerLowImage
	}
	return tokensPerImage
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// PromptTokens estimates the billed prompt tokens of req with the model's
// tokenizer, whatever the Method (the usage estimate where a provider
// reports none): message contents, names,
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
				n += imageTokens(p)
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
