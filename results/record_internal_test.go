package results

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/jsonscan"
	"github.com/llmq/llmq/jobs"
)

// requireMarshalForm fails unless encodeRecord writes r exactly as
// json.Marshal (plus validUTF8) does.
func requireMarshalForm(t *testing.T, r *jobs.Result) {
	t.Helper()
	want, werr := json.Marshal(r)
	got, gerr := encodeRecord(r)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("encodeRecord error %v, json.Marshal error %v", gerr, werr)
	}
	if werr != nil {
		return
	}
	if want = validUTF8(want); !bytes.Equal(got, want) {
		t.Fatalf("encodeRecord differs from json.Marshal:\ngot  %s\nwant %s", got, want)
	}
}

// The hand-written form covers every field of jobs.Result: a field added
// there must be added to appendRecord (this test then fails until it is).
func TestRecordCoversEveryField(t *testing.T) {
	if n := reflect.TypeFor[jobs.Result]().NumField(); n != 16 {
		t.Fatalf("jobs.Result has %d fields; appendRecord writes 16: teach it the new ones, then update this count", n)
	}
	if n := reflect.TypeFor[jobs.Usage]().NumField(); n != 4 {
		t.Fatalf("jobs.Usage has %d fields; appendRecord writes 4", n)
	}
	full := benchRecord()
	full.EnqueuedAt = full.StartedAt.Add(-time.Second)
	full.Usage.Estimated = true
	if _, ok := appendRecord(nil, full); !ok {
		t.Fatal("a plain, fully set success record is not written by appendRecord")
	}
	requireMarshalForm(t, full)
}

func TestRecordIsMarshalsForm(t *testing.T) {
	zone := time.FixedZone("x", -(3*3600 + 30*60))
	for name, mod := range map[string]func(r *jobs.Result){
		"as the worker stores it": func(r *jobs.Result) {},
		"minimal":                 func(r *jobs.Result) { *r = jobs.Result{JobID: "j", Status: jobs.StatusFailed} },
		"zero times and counts": func(r *jobs.Result) {
			r.StartedAt, r.EnqueuedAt, r.CompletedAt, r.StatusCode, r.Attempts, r.LatencyMS = time.Time{}, time.Time{}, time.Time{}, 0, 0, -5
		},
		"no usage, no body": func(r *jobs.Result) { r.Usage, r.Response = nil, nil },
		"empty body":        func(r *jobs.Result) { r.Response = json.RawMessage{} },
		"failure": func(r *jobs.Result) {
			r.Error = &jobs.ErrorInfo{Outcome: "dead_letter", Status: 400, Message: `bad "x" <y>`}
		},
		"zone and nanos":    func(r *jobs.Result) { r.CompletedAt = time.Date(2026, 1, 2, 3, 4, 5, 600, zone) },
		"year beyond 9999":  func(r *jobs.Result) { r.CompletedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		"negative year":     func(r *jobs.Result) { r.StartedAt = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) },
		"zone of a day":     func(r *jobs.Result) { r.CompletedAt = time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("d", 24*3600)) },
		"html in an id":     func(r *jobs.Result) { r.JobID = "a<b>&c" },
		"quote in a model":  func(r *jobs.Result) { r.Model = `m"1\` },
		"unicode custom id": func(r *jobs.Result) { r.CustomID = "é\u2028" },
		"invalid utf8 id":   func(r *jobs.Result) { r.RequestID = "a\xffb" },
		"control in served": func(r *jobs.Result) { r.ServedBy = "fallback:\tx\x7f" },
		"spaced body":       func(r *jobs.Result) { r.Response = json.RawMessage(" {\"a\": [1, 2]}\n") },
		"html in body":      func(r *jobs.Result) { r.Response = json.RawMessage(`{"a":"<b>&"}`) },
		"line separator":    func(r *jobs.Result) { r.Response = json.RawMessage("{\"a\":\"x\u2028y\u2029\"}") },
		"invalid utf8 body": func(r *jobs.Result) { r.Response = json.RawMessage("{\"a\":\"\xff\xe2\x80\"}") },
		"escapes in body":   func(r *jobs.Result) { r.Response = json.RawMessage(`{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}`) },
		"numbers and literal": func(r *jobs.Result) {
			r.Response = json.RawMessage(`[0,-0,1.5e+10,-2E-3,123,true,false,null,{},[],""]`)
		},
		"scalar body":       func(r *jobs.Result) { r.Response = json.RawMessage(`"x"`) },
		"invalid body":      func(r *jobs.Result) { r.Response = json.RawMessage(`{"a":01}`) },
		"truncated body":    func(r *jobs.Result) { r.Response = json.RawMessage(`{"a":[1,`) },
		"two values":        func(r *jobs.Result) { r.Response = json.RawMessage(`{}{}`) },
		"bad escape":        func(r *jobs.Result) { r.Response = json.RawMessage(`"\x"`) },
		"control in string": func(r *jobs.Result) { r.Response = json.RawMessage("\"a\nb\"") },
		"deep body":         func(r *jobs.Result) { r.Response = json.RawMessage(deep(jsonscan.MaxDepth + 5)) },
		"too deep body":     func(r *jobs.Result) { r.Response = json.RawMessage(deep(10001)) },
	} {
		t.Run(name, func(t *testing.T) {
			r := benchRecord()
			mod(r)
			requireMarshalForm(t, r)
		})
	}
}

func deep(n int) string {
	return string(bytes.Repeat([]byte("["), n)) + string(bytes.Repeat([]byte("]"), n))
}

// encodeRecord writes any body and id as json.Marshal does: canonicalJSON
// never calls a body canonical that json.Marshal would refuse or rewrite.
func FuzzRecordBody(f *testing.F) {
	for _, s := range []string{benchBody, `{"a": 1}`, `[1,2.5e3,"<",true]`, `"\u2028"`, "\"\xff\"", `{"a":-0.0E-0}`, `01`, `{"a":"\ud800"}`, `[`, `nul`} {
		f.Add([]byte(s), "bench:c17")
	}
	f.Add([]byte(benchBody), "a<\"é\x01\xff")
	f.Fuzz(func(t *testing.T, body []byte, id string) {
		r := benchRecord()
		r.Response, r.JobID = body, id
		requireMarshalForm(t, r)
		if canonicalJSON(body) && len(body) > 0 {
			var out bytes.Buffer
			if err := json.Compact(&out, body); err != nil || !bytes.Equal(out.Bytes(), body) && !bytes.ContainsAny(body, "<>&") {
				t.Fatalf("canonical body %q: Compact gives %q, %v", body, out.Bytes(), err)
			}
		}
	})
}
