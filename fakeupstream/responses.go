package fakeupstream

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/llmq/llmq/jobs"
)

// org is the organization named in rate-limit messages.
const org = "org-fake"

// reply is a complete answer: status, headers and body.
type reply struct {
	status      int
	contentType string
	header      [][2]string
	body        []byte
}

func (r reply) with(k, v string) reply {
	r.header = append(r.header, [2]string{k, v})
	return r
}

// apiError is OpenAI's error object; empty param and code are JSON null.
type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// openAIError returns an answer with OpenAI's error body.
func openAIError(status int, message, typ, param, code string) reply {
	b, _ := json.Marshal(map[string]apiError{"error": {Message: message, Type: typ, Param: nullable(param), Code: nullable(code)}})
	return reply{status: status, contentType: "application/json", body: b}
}

// azureError returns an answer with Azure OpenAI's error body, which has a
// code and a message but no type.
func azureError(status int, message string) reply {
	b, _ := json.Marshal(map[string]map[string]string{"error": {"code": strconv.Itoa(status), "message": message}})
	return reply{status: status, contentType: "application/json", body: b}
}

// Authentication answers.

const missingKeyMessage = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys."

func missingKey() reply {
	return openAIError(http.StatusUnauthorized, missingKeyMessage, "invalid_request_error", "", "")
}

func invalidKey(key string) reply {
	return openAIError(http.StatusUnauthorized,
		"Incorrect API key provided: "+maskKey(key)+". You can find your API key at https://platform.openai.com/account/api-keys.",
		"invalid_request_error", "", "invalid_api_key")
}

func azureAuthFailed() reply {
	return azureError(http.StatusUnauthorized, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.")
}

// maskKey shows a key the way OpenAI does: its start and its last four.
func maskKey(key string) string {
	if len(key) <= 8 {
		return strings.Repeat("*", len(key))
	}
	return key[:3] + strings.Repeat("*", min(len(key)-7, 20)) + key[len(key)-4:]
}

// Rate-limit answers.

// rateLimited is OpenAI's 429 rate_limit_exceeded for a budget that is
// spent: type "requests" (RPM) or "tokens" (TPM).
func rateLimited(model string, v verdict) reply {
	per := "requests per min (RPM)"
	if v.kind == "tokens" {
		per = "tokens per min (TPM)"
	}
	msg := fmt.Sprintf("Rate limit reached for %s in organization %s on %s: Limit %d, Used %d, Requested %d. Please try again in %s. Visit https://platform.openai.com/account/rate-limits to learn more.",
		model, org, per, v.limit, v.used, v.requested, formatReset(v.wait))
	return withRetryAfter(openAIError(http.StatusTooManyRequests, msg, v.kind, "", "rate_limit_exceeded"), v.wait)
}

// tooLarge is how OpenAI refuses a request whose tokens exceed the whole TPM
// limit: a 429 with type "tokens" and code "rate_limit_exceeded", like any
// rate limit, told apart only by "Request too large" and Requested > Limit
// in the message. Waiting never helps, so there is no retry-after.
func tooLarge(model string, v verdict) reply {
	msg := fmt.Sprintf("Request too large for %s in organization %s on tokens per min (TPM): Limit %d, Requested %d. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.",
		model, org, v.limit, v.requested)
	return openAIError(http.StatusTooManyRequests, msg, "tokens", "", "rate_limit_exceeded")
}

// azureRateLimited is Azure OpenAI's 429 for a spent budget.
func azureRateLimited(v verdict) reply {
	what := "call rate limit"
	if v.kind == "tokens" {
		what = "token rate limit"
	}
	secs := retryAfterSeconds(v.wait)
	msg := fmt.Sprintf("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded %s of your current OpenAI S0 pricing tier. Please retry after %d seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.", what, secs)
	return withRetryAfter(azureError(http.StatusTooManyRequests, msg), v.wait)
}

// withRetryAfter adds retry-after (whole seconds, rounded up) and
// retry-after-ms.
func withRetryAfter(r reply, wait time.Duration) reply {
	return r.with("retry-after", strconv.FormatInt(retryAfterSeconds(wait), 10)).
		with("retry-after-ms", strconv.FormatInt(int64(math.Ceil(float64(wait)/float64(time.Millisecond))), 10))
}

func retryAfterSeconds(wait time.Duration) int64 {
	return max(1, int64(math.Ceil(wait.Seconds())))
}

// Validation answers.

const unparsableMessage = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"

func invalidRequest(message, param, code string) reply {
	return openAIError(http.StatusBadRequest, message, "invalid_request_error", param, code)
}

// Fault answers.

// faultReply returns the answer of an error fault (f.isError()).
func (s *Server) faultReply(f Fault, req *jobs.Request, prompt int) reply {
	model := req.Model
	switch f.Kind {
	case FaultStatus:
		return s.statusReply(f.Status, model)
	case FaultQuota:
		return openAIError(http.StatusTooManyRequests, "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.", "insufficient_quota", "", "insufficient_quota")
	case FaultRateLimit:
		wait := f.Delay
		if wait <= 0 {
			wait = time.Second
		}
		return s.injectedRateLimit(model, wait)
	case FaultContext:
		return contextTooLong(DefaultContextWindow, max(prompt, DefaultContextWindow+1))
	case FaultNotFound:
		return s.statusReply(http.StatusNotFound, model)
	case FaultPolicy:
		return invalidRequest("Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.", "", "content_policy_violation")
	case FaultRegion:
		return openAIError(http.StatusForbidden, "Country, region, or territory not supported", "request_forbidden", "", "unsupported_country_region_territory")
	case FaultOverloaded:
		return reply{status: 529, contentType: "application/json", body: []byte(`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)}
	case FaultAzure429:
		return azureError(http.StatusTooManyRequests, "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 2 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.").
			with("retry-after", "2")
	}
	return s.statusReply(http.StatusInternalServerError, model)
}

// injectedRateLimit is a 429 rate_limit_exceeded that no budget caused.
func (s *Server) injectedRateLimit(model string, wait time.Duration) reply {
	limit := s.cfg.RPM
	if limit <= 0 {
		limit = 500
	}
	return rateLimited(model, verdict{kind: "requests", limit: limit, used: limit, requested: 1, wait: wait})
}

// cloudflarePage is the HTML OpenAI's edge answers 502 and 504 with.
func cloudflarePage(status int) reply {
	title := fmt.Sprintf("%d %s", status, http.StatusText(status))
	if status == http.StatusGatewayTimeout {
		title = "504 Gateway Time-out"
	}
	body := "<html>\r\n<head><title>" + title + "</title></head>\r\n<body>\r\n<center><h1>" + title + "</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
	return reply{status: status, contentType: "text/html", body: []byte(body)}
}

// statusReply returns OpenAI's real answer for a plain status code.
func (s *Server) statusReply(status int, model string) reply {
	switch status {
	case http.StatusBadRequest:
		return invalidRequest("Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an integer instead.", "messages[0].content", "invalid_type")
	case http.StatusUnauthorized:
		return invalidKey("sk-fake-key-from-a-fault")
	case http.StatusForbidden:
		return openAIError(status, "You are not allowed to sample from this model", "invalid_request_error", "", "permission_denied")
	case http.StatusNotFound:
		return openAIError(status, "The model `"+model+"` does not exist or you do not have access to it.", "invalid_request_error", "", "model_not_found")
	case http.StatusRequestTimeout:
		return openAIError(status, "Request timed out.", "server_error", "", "timeout")
	case http.StatusConflict:
		return openAIError(status, "The request conflicted with another request in progress. Please retry.", "invalid_request_error", "", "conflict")
	case http.StatusRequestEntityTooLarge:
		return openAIError(status, "Request body too large. The maximum size is 8 MB.", "invalid_request_error", "", "request_too_large")
	case http.StatusUnprocessableEntity:
		return openAIError(status, "Unprocessable entity: the request was well-formed but could not be processed.", "invalid_request_error", "", "unprocessable_entity")
	case http.StatusTooManyRequests:
		return s.injectedRateLimit(model, time.Second)
	case http.StatusInternalServerError:
		return openAIError(status, "The server had an error while processing your request. Sorry about that!", "server_error", "", "")
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		return cloudflarePage(status)
	case http.StatusServiceUnavailable:
		return openAIError(status, "The engine is currently overloaded, please try again later.", "server_error", "", "")
	}
	typ := "invalid_request_error"
	if status >= 500 {
		typ = "server_error"
	}
	text := http.StatusText(status)
	if text == "" {
		text = "HTTP " + strconv.Itoa(status)
	}
	return openAIError(status, text+".", typ, "", "")
}

// Success.

// completion is a chat.completion object.
type completion struct {
	ID                string   `json:"id"`
	Object            string   `json:"object"`
	Created           int64    `json:"created"`
	Model             string   `json:"model"`
	Choices           []choice `json:"choices"`
	Usage             usage    `json:"usage"`
	ServiceTier       string   `json:"service_tier"`
	SystemFingerprint string   `json:"system_fingerprint"`
	// Trace is an extra field (fault "extras").
	Trace string `json:"x_fake_trace,omitempty"`
}

type choice struct {
	Index        int             `json:"index"`
	Message      message         `json:"message"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason string          `json:"finish_reason"`
	// ContentFilterResults is an extra field (fault "extras"), as Azure
	// sends it.
	ContentFilterResults json.RawMessage `json:"content_filter_results,omitempty"`
}

type message struct {
	Role      string     `json:"role"`
	Content   *string    `json:"content"`
	Refusal   *string    `json:"refusal"`
	ToolCalls []toolCall `json:"tool_calls,omitempty"`
	// ReasoningContent is an extra field (fault "extras"), as DeepSeek and
	// vLLM send it.
	ReasoningContent string `json:"reasoning_content,omitempty"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// lastUserText returns the text of the last user message (text parts
// joined), or of the last message when none is from the user.
func lastUserText(req *jobs.Request) string {
	if len(req.Messages) == 0 {
		return ""
	}
	m := req.Messages[len(req.Messages)-1]
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role == "user" {
			m = req.Messages[i]
			break
		}
	}
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s
	}
	var parts []jobs.ContentPart
	if json.Unmarshal(m.Content, &parts) == nil {
		var texts []string
		for _, p := range parts {
			if p.Type == "text" {
				texts = append(texts, p.Text)
			}
		}
		return strings.Join(texts, " ")
	}
	return ""
}

// completionTokensPerChoice is the deterministic completion length:
// min(limit, 5 + words of the last user message mod 20).
func completionTokensPerChoice(req *jobs.Request, limit int) int {
	return min(limit, 5+len(strings.Fields(lastUserText(req)))%20)
}

// echo returns the reply content: "echo: " and the first 40 characters of
// the last user message.
func echo(req *jobs.Request) string {
	text := lastUserText(req)
	if utf8.RuneCountInString(text) > 40 {
		text = string([]rune(text)[:40])
	}
	return "echo: " + text
}

// DefaultContextWindow is the context length of the fake's models, that of
// gpt-4o.
const DefaultContextWindow = 128000

// contextTooLong is OpenAI's 400 for a prompt over the context window.
func contextTooLong(window, prompt int) reply {
	return invalidRequest(fmt.Sprintf("This model's maximum context length is %d tokens. However, your messages resulted in %d tokens. Please reduce the length of the messages.", window, prompt), "messages", "context_length_exceeded")
}
