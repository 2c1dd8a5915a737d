package results

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/llmq/llmq/internal/jsonscan"
	"github.com/llmq/llmq/jobs"
)

// The stored form of a record is json.Marshal's, byte for byte. Marshal
// re-validates and compacts a json.RawMessage (the response body) with a
// byte-at-a-time scanner, which is most of what encoding a record costs;
// the body is usually the upstream client's own compact output, so the
// worker's common record is written here directly (appendRecord) and
// json.Marshal writes every record this writer is not sure to write the
// same way.

// encodeRecord returns the stored form of r: its JSON, valid UTF-8 (see
// validUTF8).
func encodeRecord(r *jobs.Result) ([]byte, error) {
	if b, ok := appendRecord(make([]byte, 0, recordSize(r)), r); ok {
		return validUTF8(b), nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return validUTF8(b), nil
}

// recordSize is a generous estimate of r's encoded length.
func recordSize(r *jobs.Result) int {
	const fixed = 400 // names, numbers and times
	return fixed + len(r.JobID) + len(r.CustomID) + len(r.BatchID) + len(r.Model) + len(r.ServedBy) + len(r.RequestID) + len(r.Response)
}

// appendRecord appends r as json.Marshal writes it and reports true, or
// reports false when r holds anything it does not write the same way for
// certain: a string that needs escaping, a time json.Marshal refuses, a
// response body that is not already compact, HTML-safe JSON, an error.
func appendRecord(b []byte, r *jobs.Result) ([]byte, bool) {
	if r.Error != nil || !canonicalJSON(r.Response) {
		return b, false
	}
	ok := true
	str := func(name, v string, omitEmpty bool) {
		if omitEmpty && v == "" {
			return
		}
		if !plainString(v) {
			ok = false
			return
		}
		b = append(b, name...)
		b = append(b, '"')
		b = append(b, v...)
		b = append(b, '"')
	}
	tm := func(name string, t time.Time, omitZero bool) {
		if omitZero && t.IsZero() {
			return
		}
		if !rfc3339Safe(t) {
			ok = false
			return
		}
		b = append(b, name...)
		b = append(b, '"')
		b = t.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	b = append(b, '{')
	str(`"job_id":`, r.JobID, false)
	str(`,"custom_id":`, r.CustomID, true)
	str(`,"batch_id":`, r.BatchID, true)
	str(`,"status":`, r.Status, false)
	str(`,"model":`, r.Model, true)
	str(`,"served_by":`, r.ServedBy, true)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	b = append(b, `,"latency_ms":`...)
	b = strconv.AppendInt(b, r.LatencyMS, 10)
	if r.StatusCode != 0 {
		b = append(b, `,"status_code":`...)
		b = strconv.AppendInt(b, int64(r.StatusCode), 10)
	}
	str(`,"request_id":`, r.RequestID, true)
	if len(r.Response) > 0 {
		b = append(b, `,"response":`...)
		b = append(b, r.Response...)
	}
	if u := r.Usage; u != nil {
		b = append(b, `,"usage":{"prompt_tokens":`...)
		b = strconv.AppendInt(b, int64(u.PromptTokens), 10)
		b = append(b, `,"completion_tokens":`...)
		b = strconv.AppendInt(b, int64(u.CompletionTokens), 10)
		b = append(b, `,"total_tokens":`...)
		b = strconv.AppendInt(b, int64(u.TotalTokens), 10)
		if u.Estimated {
			b = append(b, `,"estimated":true`...)
		}
		b = append(b, '}')
	}
	tm(`,"enqueued_at":`, r.EnqueuedAt, true)
	tm(`,"started_at":`, r.StartedAt, true)
	tm(`,"completed_at":`, r.CompletedAt, false)
	b = append(b, '}')
	return b, ok
}

// plainString reports whether json.Marshal writes s as its bytes in
// quotes: printable ASCII without '"', '\\' and the HTML characters it
// escapes.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// rfc3339Safe reports whether time.Time.MarshalJSON accepts t (a year of
// four digits, a zone offset under a day), so that its RFC 3339 form is
// what it writes.
func rfc3339Safe(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off > -24*60*60 && off < 24*60*60
}

// canonicalJSON reports whether b is one JSON value that json.Marshal
// writes unchanged as a json.RawMessage: valid as encoding/json reads it,
// with no whitespace outside strings (Marshal compacts) and no '<', '>',
// '&', U+2028 or U+2029 (Marshal escapes them). Bytes that are not UTF-8
// are left as Marshal leaves them (validUTF8 repairs the record). Empty b
// is canonical (the field is omitted).
func canonicalJSON(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	end, ok := jsonscan.Value(b, 0, jsonscan.Options{HTMLSafe: true})
	return ok && end == len(b)
}
