package jobs

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/llmq/llmq/internal/jsonscan"
)

// The checker reads a body three ways (a map of its fields, its parts one
// by one, then the typed Request, whose keys match case-insensitively).
// fastRequest reads the usual body in one pass instead: compact (as
// Job.Encode writes it), each field once under its exact name, message
// contents of text, no tools. For anything else it gives up and the
// checker decides, so the problems reported never change.

// requestKeys are the body fields Request decodes; messageKeys a
// message's.
var (
	requestKeys = []string{"model", "messages", "max_tokens", "max_completion_tokens", "n", "temperature", "response_format", "tools", "stream"}
	messageKeys = []string{"role", "content", "name", "tool_calls", "tool_call_id"}
)

// fastRequest returns the typed view of body (what json.Unmarshal into a
// Request gives) when body certainly passes every check of checker.body;
// ok false means it could not tell.
func fastRequest(body []byte) (req *Request, ok bool) {
	if len(body) > MaxBodyBytes || !utf8.Valid(body) {
		return nil, false
	}
	var (
		f    [10][]byte // the fields below, by index
		seen uint16
	)
	const (
		fModel = iota
		fMessages
		fMaxTokens
		fMaxCompletionTokens
		fN
		fTemperature
		fTopP
		fStream
		fResponseFormat
		fTools
	)
	if !jsonscan.Members(body, jsonscan.Options{}, func(k, v []byte) bool {
		i := -1
		switch string(k) {
		case "model":
			i = fModel
		case "messages":
			i = fMessages
		case "max_tokens":
			i = fMaxTokens
		case "max_completion_tokens":
			i = fMaxCompletionTokens
		case "n":
			i = fN
		case "temperature":
			i = fTemperature
		case "top_p":
			i = fTopP
		case "stream":
			i = fStream
		case "response_format":
			i = fResponseFormat
		case "tools":
			i = fTools
		default:
			return !mayMatch(k, requestKeys)
		}
		if seen&(1<<i) != 0 {
			return false // a repeated field: the checker reads it as encoding/json does
		}
		seen |= 1 << i
		f[i] = v
		return true
	}) {
		return nil, false
	}
	r := &Request{}
	model, ok := plainString(f[fModel])
	if !ok || strings.TrimSpace(string(model)) == "" {
		return nil, false
	}
	r.Model = string(model)
	if !jsonscan.Elements(f[fMessages], jsonscan.Options{}, func(v []byte) bool {
		m, ok := fastMessage(v)
		r.Messages = append(r.Messages, m)
		return ok
	}) || len(r.Messages) == 0 {
		return nil, false
	}
	if r.MaxTokens, ok = fastInt(f[fMaxTokens], 1, maxTokensLimit); !ok {
		return nil, false
	}
	if r.MaxCompletionTokens, ok = fastInt(f[fMaxCompletionTokens], 1, maxTokensLimit); !ok {
		return nil, false
	}
	if r.N, ok = fastInt(f[fN], 1, maxN); !ok {
		return nil, false
	}
	if r.Temperature, ok = fastNum(f[fTemperature], 0, maxTemperature); !ok {
		return nil, false
	}
	if _, ok = fastNum(f[fTopP], 0, maxTopP); !ok {
		return nil, false
	}
	if s := string(f[fStream]); s != "" && s != "null" && s != "false" {
		return nil, false
	}
	if rf := f[fResponseFormat]; rf != nil {
		if !fastResponseFormat(rf) {
			return nil, false
		}
		r.ResponseFormat = rf
	}
	if t := f[fTools]; t != nil {
		if string(t) != "null" {
			return nil, false
		}
		r.Tools = t
	}
	return r, true
}

// fastMessage reads a message that certainly passes the checker's
// message checks.
func fastMessage(v []byte) (Message, bool) {
	var (
		m          Message
		seen       uint8
		role, name []byte
		callID     []byte
	)
	if !jsonscan.Members(v, jsonscan.Options{}, func(k, v []byte) bool {
		var bit uint8
		switch string(k) {
		case "role":
			bit, role = 1, v
		case "content":
			bit, m.Content = 2, v
		case "name":
			bit, name = 4, v
		case "tool_calls":
			bit, m.ToolCalls = 8, v
		case "tool_call_id":
			bit, callID = 16, v
		default:
			return !mayMatch(k, messageKeys)
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	}) {
		return m, false
	}
	r, ok := plainString(role)
	if !ok || !contains(roles, string(r)) {
		return m, false
	}
	m.Role = string(r)
	switch {
	case m.Content == nil || string(m.Content) == "null":
		if m.Role != "assistant" {
			return m, false
		}
	case m.Content[0] == '[':
		if !jsonscan.Elements(m.Content, jsonscan.Options{}, fastPart) {
			return m, false
		}
	case m.Content[0] != '"':
		return m, false
	}
	if m.Role == "tool" && (callID == nil || string(callID) == "null") {
		return m, false
	}
	if m.Name, ok = optionalString(name); !ok {
		return m, false
	}
	if m.ToolCallID, ok = optionalString(callID); !ok {
		return m, false
	}
	return m, true
}

// fastPart reports whether a content part certainly passes the checker's
// part checks: a text part with its text, or a part of a type the checker
// does not look into (image parts are left to it).
func fastPart(v []byte) bool {
	var typ, text []byte
	dup := false
	if !jsonscan.Members(v, jsonscan.Options{}, func(k, v []byte) bool {
		switch string(k) {
		case "type":
			dup = dup || typ != nil
			typ = v
		case "text":
			dup = dup || text != nil
			text = v
		}
		return !dup
	}) {
		return false
	}
	t, ok := plainString(typ)
	switch string(t) {
	case "text":
		return ok && text != nil && text[0] == '"'
	case "input_audio", "file", "refusal":
		return ok
	}
	return false
}

// optionalString reads a field that may be absent or null ("") or a plain
// string.
func optionalString(v []byte) (string, bool) {
	if v == nil || string(v) == "null" {
		return "", true
	}
	s, ok := plainString(v)
	return string(s), ok
}

// fastInt reads an optional integer field within [lo, hi].
func fastInt(v []byte, lo, hi int64) (*int, bool) {
	if v == nil || string(v) == "null" {
		return nil, true
	}
	if !jsonscan.Integer(v) {
		return nil, false
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n < lo || n > hi {
		return nil, false
	}
	i := int(n)
	return &i, true
}

// fastNum reads an optional number field within [lo, hi].
func fastNum(v []byte, lo, hi float64) (*float64, bool) {
	if v == nil || string(v) == "null" {
		return nil, true
	}
	if !isNumber(v) {
		return nil, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || f < lo || f > hi {
		return nil, false
	}
	return &f, true
}

// fastResponseFormat reports whether rf (present) certainly passes the
// checker's response_format check.
func fastResponseFormat(rf []byte) bool {
	if string(rf) == "null" {
		return true
	}
	var typ []byte
	schema, dup := false, false
	if !jsonscan.Members(rf, jsonscan.Options{}, func(k, v []byte) bool {
		switch string(k) {
		case "type":
			dup = dup || typ != nil
			typ = v
		case "json_schema":
			dup = dup || schema
			schema = true
		}
		return !dup
	}) {
		return false
	}
	t, ok := plainString(typ)
	switch string(t) {
	case "text", "json_object":
		return ok
	case "json_schema":
		return ok && schema
	}
	return false
}

// mayMatch reports whether encoding/json could match key to one of names
// (it folds case, Unicode included) or key may be one of them once
// unescaped: the fast path leaves such bodies to the checker.
func mayMatch(key []byte, names []string) bool {
	for _, c := range key {
		if c >= utf8.RuneSelf || c == '\\' {
			return true
		}
	}
	for _, n := range names {
		if strings.EqualFold(string(key), n) {
			return true
		}
	}
	return false
}

// jobKeys are the payload fields Job decodes.
var jobKeys = []string{"id", "custom_id", "batch_id", "fallback", "deadline", "max_attempts", "allow_cached", "allow_static", "body"}

// fastJob decodes a payload as Job.Encode writes it (compact, each field
// once under its exact name, strings without escapes, no deadline) into
// j, as json.Unmarshal would; ok false means it could not tell, and j is
// to be decoded by json.Unmarshal.
func fastJob(payload []byte, j *Job) (ok bool) {
	var seen uint16
	ok = jsonscan.Members(payload, jsonscan.Options{}, func(k, v []byte) bool {
		var bit uint16
		ok := true
		switch string(k) {
		case "id":
			bit = 1
			j.ID, ok = optionalString(v)
		case "custom_id":
			bit = 2
			j.CustomID, ok = optionalString(v)
		case "batch_id":
			bit = 4
			j.BatchID, ok = optionalString(v)
		case "fallback":
			bit = 8
			j.Fallback, ok = fastStrings(v)
		case "max_attempts":
			bit = 16
			if string(v) != "null" {
				var n int64
				var err error
				if ok = jsonscan.Integer(v); ok {
					n, err = strconv.ParseInt(string(v), 10, 64)
					ok = err == nil
				}
				j.MaxAttempts = int(n)
			}
		case "allow_cached":
			bit = 32
			j.AllowCached, ok = fastBool(v)
		case "allow_static":
			bit = 64
			j.AllowStatic, ok = fastBool(v)
		case "body":
			bit = 128
			j.Body = append(json.RawMessage(nil), v...) // a copy, as json.RawMessage decodes
		default: // "deadline" included: encoding/json reads it
			return !mayMatch(k, jobKeys)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
	return ok
}

// fastStrings reads null (nil) or an array of plain strings.
func fastStrings(v []byte) ([]string, bool) {
	if string(v) == "null" {
		return nil, true
	}
	out := []string{}
	ok := jsonscan.Elements(v, jsonscan.Options{}, func(e []byte) bool {
		s, ok := plainString(e)
		out = append(out, string(s))
		return ok
	})
	return out, ok
}

// fastBool reads true, false or null (false).
func fastBool(v []byte) (bool, bool) {
	switch string(v) {
	case "true":
		return true, true
	case "false", "null":
		return false, true
	}
	return false, false
}
