package jobs

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// requireSameAsChecker fails when fastRequest accepts a body that the
// checker's full reading (readBody) finds a problem with, or reads it
// differently.
func requireSameAsChecker(t *testing.T, body []byte) (fast bool) {
	t.Helper()
	req, ok := fastRequest(body)
	if !ok {
		return false
	}
	c := &checker{}
	c.readBody(body)
	if len(c.problems) > 0 {
		t.Fatalf("fastRequest accepts %q; the checker finds %v", body, c.problems)
	}
	if !reflect.DeepEqual(req, c.req) {
		t.Fatalf("fastRequest reads %q as\n%#v\nthe checker as\n%#v", body, req, c.req)
	}
	return true
}

var fastBodies = []struct {
	body string
	fast bool // fastRequest decides it
}{
	{`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt 17"}],"max_tokens":32}`, true},
	{`{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"refusal"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c"}]},{"role":"tool","tool_call_id":"c","content":"r","name":null}],` +
		`"max_completion_tokens":1073741824,"n":128,"temperature":2,"top_p":0,"stream":false,"response_format":{"type":"json_schema","json_schema":null},"tools":null,"seed":7,"user":"u"}`, true},
	{`{"model":"m","messages":[{"role":"developer","content":"\u00e9","name":"n"}],"n":null,"temperature":-0.0e0,"stream":null,"response_format":null}`, true},
	{`{"model":"m","messages":[{"role":"user","content":"x"}]} `, false},                                           // not compact
	{`{"model":"m","MODEL":"x","messages":[{"role":"user","content":"x"}]}`, false},                                // a case variant
	{`{"model":"m","messages":[{"role":"user","content":"x"}],"messages":[{"role":"user","content":"y"}]}`, false}, // repeated
	{`{"model":"m","m\u0065ssages":[{"role":"user","content":"x"}]}`, false},                                       // escaped key
	{`{"model":"m","messages":[{"role":"user","content":"x","Role":"tool"}]}`, false},
	{`{"model":"m","messages":[{"role":"user","content":"x","tool_call_id":5}]}`, false},
	{`{"model":"m","messages":[{"role":"tool","content":"x"}]}`, false},
	{`{"model":"m","messages":[{"role":"user","content":null}]}`, false},
	{`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}`, false},
	{`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","type":"x"}]}]}`, false},
	{`{"model":"m","messages":[],"max_tokens":1}`, false},
	{`{"model":" ","messages":[{"role":"user","content":"x"}]}`, false},
	{`{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1.0}`, false},
	{`{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":2.1}`, false},
	{`{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`, false},
	{`{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}`, false},
	{`{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema"}}`, false},
	{"{\"model\":\"m\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", false},
}

func TestFastRequestReadsAsTheChecker(t *testing.T) {
	for _, tc := range fastBodies {
		if got := requireSameAsChecker(t, []byte(tc.body)); got != tc.fast {
			t.Errorf("fastRequest decides %q: %v, want %v", tc.body, got, tc.fast)
		}
	}
}

// FuzzFastRequest holds fastRequest to the checker for any body.
func FuzzFastRequest(f *testing.F) {
	for _, tc := range fastBodies {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) { requireSameAsChecker(t, body) })
}

// requireSameAsJSON fails when fastJob reads a payload that json.Unmarshal
// refuses, or reads it differently.
func requireSameAsJSON(t *testing.T, payload []byte) (fast bool) {
	t.Helper()
	var got Job
	if !fastJob(payload, &got) {
		return false
	}
	var want Job
	if err := json.Unmarshal(payload, &want); err != nil {
		t.Fatalf("fastJob reads %q; json.Unmarshal: %v", payload, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fastJob reads %q as\n%#v\njson.Unmarshal as\n%#v", payload, got, want)
	}
	return true
}

var fastPayloads = []struct {
	payload string
	fast    bool
}{
	{`{"id":"bench:c17","custom_id":"c17","batch_id":"bench","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"prompt 17"}],"max_tokens":32}}`, true},
	{`{"id":"j","fallback":["a","b"],"max_attempts":3,"allow_cached":true,"allow_static":false,"body":null,"x":[1,{"y":"\n"}]}`, true},
	{`{"id":null,"custom_id":"é","fallback":[],"max_attempts":-2,"allow_cached":null,"body":"s"}`, true},
	{`{"id":"j","fallback":null,"max_attempts":null,"body":{}}`, true},
	{`{"id":"j","deadline":"2030-01-02T03:04:05Z","body":{}}`, false},
	{`{"id":"j","ID":"k","body":{}}`, false},
	{`{"id":"j","id":"k","body":{}}`, false},
	{`{"\u0069d":"j","body":{}}`, false},
	{`{"id":"j\n","body":{}}`, false},
	{`{"id":"j","max_attempts":1.0,"body":{}}`, false},
	{`{"id":"j","max_attempts":99999999999999999999,"body":{}}`, false},
	{`{"id":"j","fallback":["a",null],"body":{}}`, false},
	{`{"id":"j","allow_cached":1,"body":{}}`, false},
	{`{"id":"j","body":{}} `, false},
	{"{\"id\":\"j\xff\",\"body\":{}}", false},
	{`{"id":5,"body":{}}`, false},
}

func TestFastJobReadsAsJSON(t *testing.T) {
	for _, tc := range fastPayloads {
		if got := requireSameAsJSON(t, []byte(tc.payload)); got != tc.fast {
			t.Errorf("fastJob decides %q: %v, want %v", tc.payload, got, tc.fast)
		}
	}
}

// FuzzFastJob holds fastJob to json.Unmarshal for any payload.
func FuzzFastJob(f *testing.F) {
	for _, tc := range fastPayloads {
		f.Add([]byte(tc.payload))
	}
	f.Fuzz(func(t *testing.T, payload []byte) { requireSameAsJSON(t, payload) })
}

// The fast paths know the fields by name (requestKeys, messageKeys,
// jobKeys): a field added to Request, Message or Job and not to its list
// would be dropped by the fast path while json.Unmarshal reads it, and a
// case variant of its key would slip past mayMatch. This fails until the
// list (and the fast path that reads it) learns the field.
func TestFastKeysAreTheStructsFields(t *testing.T) {
	for _, c := range []struct {
		typ  reflect.Type
		keys []string
	}{
		{reflect.TypeFor[Request](), requestKeys},
		{reflect.TypeFor[Message](), messageKeys},
		{reflect.TypeFor[Job](), jobKeys},
	} {
		var fields []string
		for f := range c.typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields = append(fields, name)
		}
		if got, want := slices.Sorted(slices.Values(c.keys)), slices.Sorted(slices.Values(fields)); !slices.Equal(got, want) {
			t.Errorf("%s: the fast path's keys %v, the struct's JSON fields %v", c.typ.Name(), got, want)
		}
	}
}
