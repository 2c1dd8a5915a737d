package jobs

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func job(body string) *Job { return &Job{ID: "j1", Body: json.RawMessage(body)} }

func TestValidateFieldPaths(t *testing.T) {
	ok := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	cases := []struct {
		name string
		job  *Job
		want []string // every expected problem, as "path: message" prefixes
	}{
		{"valid short", job(ok), nil},
		{"valid multipart, tools, format, unknown fields", job(`{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"42"}],"max_completion_tokens":50,"n":2,"temperature":0.5,"response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f"}}],"seed":7,"logit_bias":{"1":2}}`), nil},
		{"bad role", job(`{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"robot","content":"c"}]}`),
			[]string{"messages[2].role: must be one of system,user,assistant,tool,developer"}},
		{"missing model and messages", job(`{}`), []string{"model: is required", "messages: is required"}},
		{"wrong types", job(`{"model":5,"messages":"hi","max_tokens":"10","temperature":"hot","n":0}`),
			[]string{"model: must be a string", "messages: must be an array", "max_tokens: must be an integer", "n: must be between 1 and 128", "temperature: must be a number"}},
		{"out of range", job(`{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3,"max_tokens":0,"top_p":2}`),
			[]string{"max_tokens: must be between", "temperature: must be between 0 and 2", "top_p: must be between 0 and 1"}},
		{"content part problems", job(`{"model":"m","messages":[{"role":"user","content":[{"type":"text"},{"type":"video"},{"type":"image_url"},7]}]}`),
			[]string{"messages[0].content[0].text: is required", "messages[0].content[1].type: must be one of", "messages[0].content[2].image_url.url: is required", "messages[0].content[3]: must be a content part"}},
		{"tool message without id", job(`{"model":"m","messages":[{"role":"tool","content":"x"}]}`), []string{"messages[0].tool_call_id: is required"}},
		{"user without content", job(`{"model":"m","messages":[{"role":"user"}]}`), []string{"messages[0].content: is required"}},
		{"stream refused", job(`{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`), []string{"stream: must be false"}},
		{"response format", job(`{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}`), []string{"response_format.type: must be one of"}},
		{"tools", job(`{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{}}]}`), []string{"tools[0].function.name: is required"}},
		{"body not object", job(`[1,2]`), []string{"body: must be a JSON object"}},
		{"body missing", &Job{ID: "x"}, []string{"body: is required"}},
		{"invalid utf8", job("{\"model\":\"m\xff\",\"messages\":[]}"), []string{"body: must be valid UTF-8"}},
		{"metadata", &Job{ID: "", CustomID: strings.Repeat("c", 300), Fallback: []string{""}, MaxAttempts: -1, Body: json.RawMessage(ok)},
			[]string{"id: is required", "custom_id: must be at most 256", "fallback[0]: must be a model name", "max_attempts: must be 0"}},
		{"too big", job(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a", MaxBodyBytes) + `"}]}`), []string{"body: is "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.job.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want a *ValidationError matching ErrInvalid", err)
			}
			if len(ve.Problems) != len(tc.want) {
				t.Errorf("got %d problems %v, want %d", len(ve.Problems), ve.Problems, len(tc.want))
			}
			for _, w := range tc.want {
				found := false
				for _, p := range ve.Problems {
					found = found || strings.HasPrefix(p.String(), w)
				}
				if !found {
					t.Errorf("no problem starts with %q in %v", w, ve.Problems)
				}
			}
		})
	}
}

func TestParseLineForms(t *testing.T) {
	batch := `{"custom_id":"a1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":10,"x_unknown":{"k":[1,2]}}}`
	j, err := ParseLine([]byte(batch))
	if err != nil {
		t.Fatal(err)
	}
	if j.CustomID != "a1" || !strings.Contains(string(j.Body), `"x_unknown":{"k":[1,2]}`) {
		t.Fatalf("batch form: custom_id %q body %s: unknown fields must pass through untouched", j.CustomID, j.Body)
	}
	short := `{"custom_id":"s1","model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"fallback":["gpt-4o-mini"],"deadline":"2030-01-02T03:04:05Z","allow_cached":true,"seed":3}`
	j, err = ParseLine([]byte(short))
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(j.Body, &body); err != nil {
		t.Fatal(err)
	}
	if _, ok := body["custom_id"]; ok {
		t.Error("short form: metadata custom_id leaked into the body")
	}
	if _, ok := body["fallback"]; ok {
		t.Error("short form: metadata fallback leaked into the body")
	}
	if string(body["seed"]) != "3" || j.Fallback[0] != "gpt-4o-mini" || !j.AllowCached || j.Deadline.Year() != 2030 {
		t.Errorf("short form parsed wrong: %+v body %s", j, j.Body)
	}
	for _, bad := range []struct{ line, want string }{
		{`not json`, "(line): must be a JSON object"},
		{`{"custom_id":"x","method":"GET","url":"/v1/embeddings","body":{}}`, "method: must be"},
		{`{"custom_id":7,"model":"m","messages":[]}`, "custom_id: must be a string"},
		{`{"model":"m","messages":[],"deadline":"soon"}`, "deadline: must be an RFC 3339"},
	} {
		_, err := ParseLine([]byte(bad.line))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseLine(%s) = %v, want %q", bad.line, err, bad.want)
		}
	}
}

func TestReaderReportsLineNumbers(t *testing.T) {
	in := "{\"custom_id\":\"a\",\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n\n{oops\n"
	r := NewReader(strings.NewReader(in))
	if _, line, err := r.Next(); err != nil || line != 1 {
		t.Fatalf("first: line %d err %v", line, err)
	}
	_, line, err := r.Next()
	var le *LineError
	if !errors.As(err, &le) || le.Line != 3 || line != 3 {
		t.Fatalf("second: line %d err %v, want a LineError at line 3 (blank lines count)", line, err)
	}
}

// A read that fails mid-line is the reader's failure, not a problem of the
// cut line: the scanner hands the bytes before it back as a last line.
func TestReaderReportsReadFailures(t *testing.T) {
	broken := errors.New("connection lost")
	full := "{\"custom_id\":\"a\",\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n"
	r := NewReader(io.MultiReader(strings.NewReader(full+full[:20]), iotest.ErrReader(broken)))
	if _, _, err := r.Next(); err != nil {
		t.Fatalf("first line: %v", err)
	}
	_, _, err := r.Next()
	var le *LineError
	if !errors.Is(err, broken) || errors.As(err, &le) {
		t.Fatalf("err = %v, want the read failure, not a line problem", err)
	}
}

func TestOutputLine(t *testing.T) {
	ok := (&Result{JobID: "b:1", CustomID: "1", Status: StatusSucceeded, StatusCode: 200, RequestID: "req_1", Response: json.RawMessage(`{"id":"c"}`), ServedBy: "primary"}).OutputLine()
	if ok.Error != nil || ok.Response == nil || ok.Response.StatusCode != 200 || ok.CustomID != "1" {
		t.Errorf("success line = %+v", ok)
	}
	bad := (&Result{JobID: "b:2", CustomID: "2", Status: StatusFailed, StatusCode: 400, Error: &ErrorInfo{Outcome: "dead_letter", Type: "invalid_request_error", Code: "", Message: "nope"}}).OutputLine()
	if bad.Error == nil || bad.Error.Code != "invalid_request_error" || bad.Error.Message != "nope" || bad.Response.StatusCode != 400 {
		t.Errorf("failure line = %+v", bad)
	}
	b, _ := json.Marshal(bad)
	for _, k := range []string{`"id":`, `"custom_id":`, `"response":`, `"error":`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("output line lacks %s: %s", k, b)
		}
	}
}

// Issue 10 item 1: with ':' out of batch ids, JobID is injective.
func TestJobIDIsInjective(t *testing.T) {
	if err := CheckBatchID("hx:a"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CheckBatchID(hx:a) = %v, want invalid", err)
	}
	for _, ok := range []string{"hx", "batch_0123abc", "demo-20261201-181500", "a.b"} {
		if err := CheckBatchID(ok); err != nil {
			t.Errorf("CheckBatchID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "x{y}", "é", strings.Repeat("a", MaxIDLength+1)} {
		if err := CheckBatchID(bad); err == nil {
			t.Errorf("CheckBatchID(%q) accepted", bad)
		}
	}
	pairs := [][2]string{{"hx", "a:b"}, {"hx-a", "b"}, {"h", "x:a:b"}, {"hx.a", "b"}}
	seen := map[string][2]string{}
	for _, p := range pairs {
		id := JobID(p[0], p[1])
		if q, ok := seen[id]; ok {
			t.Fatalf("%v and %v share job id %q", p, q, id)
		}
		seen[id] = p
	}
}
