package jobs_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/llmq/llmq/jobs"
)

// The fuzzers hold the job contract's promises for any input: no panic;
// every rejection is a *jobs.ValidationError (errors.Is jobs.ErrInvalid)
// whose every Problem names a field path; and whatever is accepted can be
// run — a job that validates encodes to a payload the worker decodes back
// to the same job, whose body the worker can read (Job.Request). The seed
// corpus is the f.Add calls plus testdata/fuzz/<Fuzzer>/.
//
// Run one for a while with scripts/fuzz.sh or:
//
//	go test -run '^$' -fuzz '^FuzzDecode$' -fuzztime 30s ./jobs

// requireRejection fails unless err is a validation error naming a field
// path for each problem.
func requireRejection(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, jobs.ErrInvalid) {
		t.Fatalf("rejection is not a jobs.ErrInvalid: %T %v", err, err)
	}
	var ve *jobs.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("rejection is not a *jobs.ValidationError: %T %v", err, err)
	}
	if len(ve.Problems) == 0 {
		t.Fatalf("validation error lists no problem: %v", err)
	}
	for _, p := range ve.Problems {
		if p.Path == "" {
			t.Fatalf("problem without a field path: %q in %v", p.Message, err)
		}
	}
}

// requireRunnable fails unless a validated job survives the trip through
// Redis: Encode, Decode (the worker's view), Request.
func requireRunnable(t *testing.T, j *jobs.Job) {
	t.Helper()
	payload, err := j.Encode()
	if err != nil {
		t.Fatalf("valid job does not encode: %v", err)
	}
	back, err := jobs.Decode(payload)
	if err != nil {
		t.Fatalf("the worker cannot decode what the producer accepted: %v\npayload: %q", err, payload)
	}
	if back.ID != j.ID || back.CustomID != j.CustomID || back.BatchID != j.BatchID || back.MaxAttempts != j.MaxAttempts {
		t.Fatalf("metadata changed on the way through Redis: %+v -> %+v", j, back)
	}
	if !jsonEqual(back.Body, j.Body) {
		t.Fatalf("body changed on the way through Redis:\n%q\n%q", j.Body, back.Body)
	}
	if _, err := back.Request(); err != nil {
		t.Fatalf("validated job's body is unreadable by the worker: %v\nbody: %q", err, back.Body)
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

var seedBodies = []string{
	`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`,
	`{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}],"max_tokens":16,"n":2,"temperature":0.5,"top_p":1}`,
	`{"model":"m","messages":[{"role":"assistant","tool_calls":[]},{"role":"tool","tool_call_id":"c1","content":"42"}],"tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"json_object"}}`,
	`{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"s"}},"max_completion_tokens":1}`,
	`{"model":5,"messages":"hi","max_tokens":"ten","temperature":"hot","stream":"yes"}`,
	`{"model":"m","messages":[{"role":"robot","content":7},{"content":"x"}]}`,
	`{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`,
	`{"model":"m","MODEL":5,"messages":[{"role":"user","content":"x"}]}`,
	`{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e3}`,
	`{"model":"","messages":[]}`,
	`[1,2,3]`,
	`null`,
	`"body"`,
	"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"bad \xff\"}]}",
	`{"model":"m","messages":[{"role":"user","content":"x"}],"n":129,"temperature":2.5,"top_p":-1}`,
	`{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}],"response_format":{"type":"xml"}}`,
}

// FuzzDecode feeds arbitrary task payloads to jobs.Decode, the worker's
// first step: poison must be rejected with field paths, never a panic.
func FuzzDecode(f *testing.F) {
	for _, b := range seedBodies {
		f.Add([]byte(`{"id":"j1","body":` + b + `}`))
	}
	for _, p := range []string{
		``, `null`, `[]`, `{}`, `{"id":5}`, `{"id":"j","body":{}}`, "\x00\xff", `{"id":"j","deadline":"tomorrow","body":{}}`,
		`{"id":"j","fallback":[""],"max_attempts":-1,"body":{"model":"m","messages":[{"role":"user","content":"x"}]}}`,
		`{"id":"j","custom_id":"c\n","batch_id":"b","allow_cached":"yes","body":{"model":"m","messages":[{"role":"user","content":"x"}]}}`,
		`{"id":"j","deadline":"2030-01-02T03:04:05+01:00","body":{"model":"m","messages":[{"role":"user","content":"x"}]}}`,
	} {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		j, req, err := jobs.DecodeRequest(payload)
		if err != nil {
			requireRejection(t, err)
			return
		}
		// The view read with the validation is the one Request reads.
		if again, err := j.Request(); err != nil || !reflect.DeepEqual(again, req) {
			t.Fatalf("DecodeRequest's request %+v differs from Request's %+v (%v)", req, again, err)
		}
		if err := j.Validate(); err != nil && !onlyEnqueueRules(err) {
			t.Fatalf("Decode accepted a job Validate rejects: %v", err)
		}
		requireRunnable(t, j)
	})
}

// onlyEnqueueRules reports whether every problem of err comes from the
// rules Validate applies at enqueue only (a job id holding ":" that is not
// <batch_id>:<custom_id>, a batch id outside BatchIDAlphabet): the worker's
// Decode skips them, so that a job enqueued before a rule existed never
// turns into poison. Decode checks everything else on those fields too.
func onlyEnqueueRules(err error) bool {
	var ve *jobs.ValidationError
	if !errors.As(err, &ve) {
		return false
	}
	for _, p := range ve.Problems {
		if p.Path != "id" && p.Path != "batch_id" {
			return false
		}
	}
	return true
}

// FuzzValidate builds jobs field by field, the way a Go service using the
// producer does, and validates them.
func FuzzValidate(f *testing.F) {
	for i, b := range seedBodies {
		f.Add("job-1", "c1", "batch", "", i%3, []byte(b))
	}
	f.Add("", "", "", "gpt-4o", 0, []byte(seedBodies[0]))
	f.Add("j\x00", "c\n", strings.Repeat("b", 300), " ", -1, []byte(seedBodies[0]))
	f.Add("j\xff", "", "", "", 0, []byte(seedBodies[1]))
	f.Fuzz(func(t *testing.T, id, customID, batchID, fallback string, maxAttempts int, body []byte) {
		j := &jobs.Job{ID: id, CustomID: customID, BatchID: batchID, MaxAttempts: maxAttempts, Body: body}
		if fallback != "" {
			j.Fallback = strings.Split(fallback, ",")
		}
		err := j.Validate()
		if err != nil {
			requireRejection(t, err)
			return
		}
		if !utf8.Valid(body) || !json.Valid(body) {
			t.Fatalf("Validate accepted a body that is not valid UTF-8 JSON: %q", body)
		}
		requireRunnable(t, j)
	})
}

// FuzzParseLine parses arbitrary JSONL lines (both input forms), then
// validates the job the way producer.EnqueueBatch does.
func FuzzParseLine(f *testing.F) {
	for _, b := range seedBodies {
		f.Add([]byte(`{"custom_id":"c1","method":"POST","url":"/v1/chat/completions","body":` + b + `}`))
		if strings.HasPrefix(b, "{") {
			f.Add([]byte(`{"custom_id":"c2",` + b[1:]))
		}
	}
	for _, l := range []string{
		``, `null`, `[]`, `{}`, `"x"`, `{"custom_id":5}`, `{"method":"GET","url":"/v1/embeddings","body":{}}`,
		`{"custom_id":"c","deadline":"2h","max_attempts":"3","allow_static":1,"fallback":"m2","model":"m","messages":[{"role":"user","content":"x"}]}`,
		`{"custom_id":"c","deadline":"-5m","fallback":["m2",""],"model":"m","messages":[{"role":"user","content":"x"}]}`,
		`{"id":"j","body":null}`,
	} {
		f.Add([]byte(l))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		j, err := jobs.ParseLine(line)
		if err != nil {
			requireRejection(t, err)
			return
		}
		if j.ID == "" {
			j.ID = "batch:" + j.CustomID
		}
		if err := j.Validate(); err != nil {
			requireRejection(t, err)
			return
		}
		requireRunnable(t, j)
	})
}

// FuzzReader reads arbitrary JSONL input with jobs.NewReader: line numbers
// only grow, every bad line is a *jobs.LineError with field paths (or a
// line too long, after which the Reader stops), and the Reader ends.
func FuzzReader(f *testing.F) {
	var all bytes.Buffer
	for _, b := range seedBodies {
		all.WriteString(`{"custom_id":"c","body":` + b + "}\n")
	}
	f.Add(all.Bytes())
	f.Add([]byte("\n\n   \n"))
	f.Add([]byte("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\r\nnot json\n\x00\n{}"))
	f.Add([]byte(`{"custom_id":"a","model":"m","messages":[{"role":"user","content":"x"}]}` + "\n" + `{"custom_id":"a","model":"m","messages":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := jobs.NewReader(bytes.NewReader(data))
		last := 0
		for steps := 0; ; steps++ {
			if steps > len(data)+1 {
				t.Fatalf("Reader returned %d results for %d bytes", steps, len(data))
			}
			j, line, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if line <= last {
				t.Fatalf("line number went from %d to %d", last, line)
			}
			last = line
			var le *jobs.LineError
			switch {
			case errors.As(err, &le):
				if le.Line != line {
					t.Fatalf("LineError for line %d returned with line %d", le.Line, line)
				}
				if errors.Is(err, jobs.ErrLineTooLong) {
					return
				}
				requireRejection(t, le.Err)
			case err != nil:
				t.Fatalf("Next: %v (not a *jobs.LineError)", err)
			case j == nil:
				t.Fatalf("Next returned no job and no error at line %d", line)
			}
		}
	})
}
