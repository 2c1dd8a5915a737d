package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
)

// Bounds on what one stream may build, so a hostile or broken upstream
// cannot make the assembler allocate without limit.
const (
	maxStreamChoices   = 128
	maxStreamToolCalls = 128
)

// assembler builds, from the chunks of a streamed chat completion, the
// chat.completion object the same request returns without streaming.
//
// It is written here rather than taken from openai-go's
// ChatCompletionAccumulator because that type accumulates into the SDK's
// typed ChatCompletion: fields it does not know are dropped ("the JSON field
// does not get accumulated"), so a provider's extra fields (Azure's
// content_filter_results, DeepSeek's and vLLM's reasoning_content, any
// field newer than the SDK) would vanish from the stored body; it sums
// usage over chunks instead of taking the final chunk's; and marshalling the
// typed struct writes every known field with its zero value ("refusal": "",
// empty audio), so the body would no longer equal the non-streaming one. This
// assembler works on raw JSON and keeps every field.
//
// Rules, by level:
//
//   - chunk: "object" becomes "chat.completion"; "usage" is the last non-null
//     usage (the final chunk's, with include_usage); "choices" are merged by
//     index; "obfuscation" (stream-only padding) is dropped; every other
//     field (id, created, model, system_fingerprint, service_tier, unknown
//     ones) keeps its last non-null value, or null when it was only ever
//     null.
//   - choice: "delta" builds "message"; "logprobs" concatenates its
//     "content" and "refusal" arrays (other logprobs fields: last non-null);
//     "finish_reason" and unknown fields keep their last non-null value.
//   - delta: "role" is the first one sent; "content" and "refusal" are the
//     concatenation of their fragments (null when none was a string; an
//     empty content beside tool calls or a refusal is null, as the
//     non-streaming API writes it); "tool_calls" are merged by their
//     "index" (id and type: first non-empty; function name and arguments:
//     concatenated; other fields: last non-null; "index" itself removed);
//     the legacy "function_call" merges like a tool call's function; any
//     other string field is concatenated (reasoning_content arrives in
//     fragments), any other non-string field keeps its last non-null value.
type assembler struct {
	top     map[string]json.RawMessage
	usage   json.RawMessage
	choices map[int]*choiceAcc
	chunks  int
}

type choiceAcc struct {
	fields   map[string]json.RawMessage // unknown choice-level fields and finish_reason
	logprobs *logprobsAcc
	msg      *deltaAcc
}

type logprobsAcc struct {
	fields map[string]json.RawMessage
	arrays map[string][]json.RawMessage
}

// deltaAcc accumulates an object whose string fields arrive in fragments: a
// message (from deltas) or a function call.
type deltaAcc struct {
	strs      map[string]*bytes.Buffer // concatenated string fields
	raw       map[string]json.RawMessage
	first     map[string]string // fields that keep their first value (role, id, type)
	tools     map[int]*toolAcc
	function  *deltaAcc // a tool call's function, or a message's function_call
	fnKey     string    // "function" or "function_call"
	keepFirst []string
}

type toolAcc struct {
	d *deltaAcc
}

func newDeltaAcc(keepFirst ...string) *deltaAcc {
	return &deltaAcc{strs: map[string]*bytes.Buffer{}, raw: map[string]json.RawMessage{}, first: map[string]string{}, keepFirst: keepFirst}
}

func newAssembler() *assembler {
	return &assembler{top: map[string]json.RawMessage{}, choices: map[int]*choiceAcc{}}
}

var errChunk = errors.New("stream chunk")

// add merges one chunk, the JSON of one data event.
func (a *assembler) add(data []byte) error {
	var chunk map[string]json.RawMessage
	if err := json.Unmarshal(data, &chunk); err != nil {
		return fmt.Errorf("%w %d is not a JSON object: %w", errChunk, a.chunks+1, err)
	}
	a.chunks++
	for k, v := range chunk {
		switch k {
		case "object", "obfuscation":
		case "usage":
			if !isNull(v) {
				a.usage = v
			}
		case "choices":
			if isNull(v) {
				continue
			}
			var cs []map[string]json.RawMessage
			if err := json.Unmarshal(v, &cs); err != nil {
				return fmt.Errorf("%w %d: choices: %w", errChunk, a.chunks, err)
			}
			for _, c := range cs {
				if err := a.addChoice(c); err != nil {
					return fmt.Errorf("%w %d: %w", errChunk, a.chunks, err)
				}
			}
		default:
			setLast(a.top, k, v)
		}
	}
	return nil
}

func (a *assembler) addChoice(c map[string]json.RawMessage) error {
	idx := 0
	if raw, ok := c["index"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &idx); err != nil {
			return fmt.Errorf("choice index: %w", err)
		}
	}
	if idx < 0 || idx >= maxStreamChoices {
		return fmt.Errorf("choice index %d out of range [0, %d)", idx, maxStreamChoices)
	}
	ch := a.choices[idx]
	if ch == nil {
		ch = &choiceAcc{fields: map[string]json.RawMessage{}, msg: newDeltaAcc("role")}
		a.choices[idx] = ch
	}
	for k, v := range c {
		switch k {
		case "index", "obfuscation":
		case "delta":
			if isNull(v) {
				continue
			}
			var d map[string]json.RawMessage
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("choice %d delta: %w", idx, err)
			}
			if err := ch.msg.add(d); err != nil {
				return fmt.Errorf("choice %d delta: %w", idx, err)
			}
		case "logprobs":
			if isNull(v) {
				if ch.logprobs == nil {
					setLast(ch.fields, k, v)
				}
				continue
			}
			var lp map[string]json.RawMessage
			if err := json.Unmarshal(v, &lp); err != nil {
				return fmt.Errorf("choice %d logprobs: %w", idx, err)
			}
			if ch.logprobs == nil {
				ch.logprobs = &logprobsAcc{fields: map[string]json.RawMessage{}, arrays: map[string][]json.RawMessage{}}
			}
			for lk, lv := range lp {
				var arr []json.RawMessage
				if (lk == "content" || lk == "refusal") && !isNull(lv) && json.Unmarshal(lv, &arr) == nil {
					ch.logprobs.arrays[lk] = append(ch.logprobs.arrays[lk], arr...)
					continue
				}
				setLast(ch.logprobs.fields, lk, lv)
			}
		default:
			setLast(ch.fields, k, v)
		}
	}
	return nil
}

// add merges one delta object into d.
func (d *deltaAcc) add(delta map[string]json.RawMessage) error {
	for k, v := range delta {
		switch {
		case k == "obfuscation":
		case slices.Contains(d.keepFirst, k):
			var s string
			if _, ok := d.first[k]; !ok && json.Unmarshal(v, &s) == nil && s != "" {
				d.first[k] = s
			}
		case k == "tool_calls":
			if isNull(v) {
				continue
			}
			var calls []map[string]json.RawMessage
			if err := json.Unmarshal(v, &calls); err != nil {
				return fmt.Errorf("tool_calls: %w", err)
			}
			for pos, call := range calls {
				if err := d.addTool(pos, call); err != nil {
					return err
				}
			}
		case k == "function" || k == "function_call":
			if isNull(v) {
				setLast(d.raw, k, v)
				continue
			}
			var f map[string]json.RawMessage
			if err := json.Unmarshal(v, &f); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			if d.function == nil {
				d.function = newDeltaAcc()
			}
			delete(d.raw, k)
			d.fnKey = k
			if err := d.function.add(f); err != nil {
				return err
			}
		default:
			var s string
			if len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil {
				b := d.strs[k]
				if b == nil {
					b = &bytes.Buffer{}
					d.strs[k] = b
				}
				b.WriteString(s)
				delete(d.raw, k)
				continue
			}
			if _, isStr := d.strs[k]; isStr && isNull(v) {
				continue
			}
			setLast(d.raw, k, v)
		}
	}
	return nil
}

func (d *deltaAcc) addTool(pos int, call map[string]json.RawMessage) error {
	idx := pos
	if raw, ok := call["index"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &idx); err != nil {
			return fmt.Errorf("tool_calls[%d].index: %w", pos, err)
		}
		idx = max(idx, 0) // some servers send -1 for a single call
	}
	if idx >= maxStreamToolCalls {
		return fmt.Errorf("tool call index %d out of range [0, %d)", idx, maxStreamToolCalls)
	}
	if d.tools == nil {
		d.tools = map[int]*toolAcc{}
	}
	t := d.tools[idx]
	if t == nil {
		t = &toolAcc{d: newDeltaAcc("id", "type")}
		d.tools[idx] = t
	}
	delete(call, "index")
	return t.d.add(call)
}

// object renders d as a JSON object; lead names the keys written first, in
// order, when present.
func (d *deltaAcc) object(lead ...string) (json.RawMessage, error) {
	fields := map[string]json.RawMessage{}
	for k, v := range d.raw {
		fields[k] = v
	}
	for k, s := range d.first {
		fields[k] = mustJSON(s)
	}
	for k, b := range d.strs {
		fields[k] = mustJSON(b.String())
	}
	if len(d.tools) > 0 {
		idx := make([]int, 0, len(d.tools))
		for i := range d.tools {
			idx = append(idx, i)
		}
		sort.Ints(idx)
		calls := make([]json.RawMessage, 0, len(idx))
		for _, i := range idx {
			c, err := d.tools[i].d.object("id", "type", "function")
			if err != nil {
				return nil, err
			}
			calls = append(calls, c)
		}
		b, err := json.Marshal(calls)
		if err != nil {
			return nil, err
		}
		fields["tool_calls"] = b
	}
	if d.function != nil {
		f, err := d.function.object("name", "arguments")
		if err != nil {
			return nil, err
		}
		fields[d.fnKey] = f
	}
	return orderedObject(fields, lead...)
}

// message renders a choice's accumulated deltas as its message.
func (d *deltaAcc) message() (json.RawMessage, error) {
	_, hasContent := d.strs["content"]
	refusal := d.strs["refusal"]
	if !hasContent {
		if _, ok := d.raw["content"]; !ok {
			d.raw["content"] = json.RawMessage("null")
		}
	} else if d.strs["content"].Len() == 0 && (len(d.tools) > 0 || (refusal != nil && refusal.Len() > 0)) {
		delete(d.strs, "content")
		d.raw["content"] = json.RawMessage("null")
	}
	return d.object("role", "content", "refusal", "tool_calls", "function_call")
}

// completion renders the assembled chat.completion object.
func (a *assembler) completion() ([]byte, error) {
	fields := map[string]json.RawMessage{}
	for k, v := range a.top {
		fields[k] = v
	}
	fields["object"] = json.RawMessage(`"chat.completion"`)
	if a.usage != nil {
		fields["usage"] = a.usage
	}
	idx := make([]int, 0, len(a.choices))
	for i := range a.choices {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	choices := make([]json.RawMessage, 0, len(idx))
	for _, i := range idx {
		ch := a.choices[i]
		cf := map[string]json.RawMessage{}
		for k, v := range ch.fields {
			cf[k] = v
		}
		cf["index"] = mustJSON(i)
		msg, err := ch.msg.message()
		if err != nil {
			return nil, err
		}
		cf["message"] = msg
		if ch.logprobs != nil {
			lf := map[string]json.RawMessage{}
			for k, v := range ch.logprobs.fields {
				lf[k] = v
			}
			for k, arr := range ch.logprobs.arrays {
				b, err := json.Marshal(arr)
				if err != nil {
					return nil, err
				}
				lf[k] = b
			}
			lp, err := orderedObject(lf, "content", "refusal")
			if err != nil {
				return nil, err
			}
			cf["logprobs"] = lp
		} else if _, ok := cf["logprobs"]; !ok {
			cf["logprobs"] = json.RawMessage("null")
		}
		if _, ok := cf["finish_reason"]; !ok {
			cf["finish_reason"] = json.RawMessage("null")
		}
		c, err := orderedObject(cf, "index", "message", "logprobs", "finish_reason")
		if err != nil {
			return nil, err
		}
		choices = append(choices, c)
	}
	b, err := json.Marshal(choices)
	if err != nil {
		return nil, err
	}
	fields["choices"] = b
	return orderedObject(fields, "id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint")
}

// generatedChars is the length of everything the model wrote (content,
// refusal, tool-call arguments and names, other text fields), for a usage
// estimate when the stream reported none.
func (a *assembler) generatedChars() int {
	n := 0
	var count func(d *deltaAcc)
	count = func(d *deltaAcc) {
		for _, b := range d.strs {
			n += b.Len()
		}
		for _, t := range d.tools {
			count(t.d)
		}
		if d.function != nil {
			count(d.function)
		}
	}
	for _, ch := range a.choices {
		count(ch.msg)
	}
	return n
}

// setLast stores v under k unless v is null and k already has a value.
func setLast(m map[string]json.RawMessage, k string, v json.RawMessage) {
	if isNull(v) {
		if _, ok := m[k]; ok {
			return
		}
		v = json.RawMessage("null")
	}
	m[k] = v
}

func isNull(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	return len(v) == 0 || bytes.Equal(v, []byte("null"))
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // strings and ints always marshal
	}
	return b
}

// orderedObject writes fields as a JSON object: the lead keys first, in
// order, then the others sorted.
func orderedObject(fields map[string]json.RawMessage, lead ...string) (json.RawMessage, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	first := true
	write := func(k string, v json.RawMessage) error {
		if !first {
			buf.WriteByte(',')
		}
		first = false
		kb, err := json.Marshal(k)
		if err != nil {
			return err
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(v)
		return nil
	}
	for _, k := range lead {
		if v, ok := fields[k]; ok {
			if err := write(k, v); err != nil {
				return nil, err
			}
		}
	}
	rest := make([]string, 0, len(fields))
	for k := range fields {
		if !slices.Contains(lead, k) {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		if err := write(k, fields[k]); err != nil {
			return nil, err
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}
