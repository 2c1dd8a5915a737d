package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/results"
)

const procKey = "sk-proc-test-key-0123456789"

// escapedKey is procKey as \u escapes, the way the fake's echokey and the
// hostile upstream below write it.
func escapedKey() string {
	var b strings.Builder
	for _, r := range procKey {
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	return b.String()
}

// redisDump returns every value under the test's prefix and queue: result
// records, batch records and asynq's tasks (payload, result, last error).
func redisDump(t *testing.T, p *procEnv) string {
	t.Helper()
	var b strings.Builder
	for _, pattern := range []string{p.env.Prefix + ":*", "asynq:{" + p.env.Queue + "}*"} {
		iter := p.env.Client.Scan(ctx(t), 0, pattern, 1000).Iterator()
		for iter.Next(ctx(t)) {
			k := iter.Val()
			switch typ, _ := p.env.Client.Type(ctx(t), k).Result(); typ {
			case "string":
				v, _ := p.env.Client.Get(ctx(t), k).Result()
				b.WriteString(v)
			case "hash":
				m, _ := p.env.Client.HGetAll(ctx(t), k).Result()
				for f, v := range m {
					b.WriteString(f + "=" + v + "\n")
				}
			}
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// An upstream (or a proxy) echoing the API key in x-request-id and,
// JSON-escaped, in the body: the key reaches no log, result record, asynq
// task or export.
func TestEchoedKeyScrubbedEverywhere(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{Faults: "echokey"}, nil)
	w := p.start("worker", "--concurrency", "1")
	if _, errOut, code := p.run(jsonl(1), "enqueue", "-", "--batch", "echo", "--wait"); code != 0 {
		t.Fatalf("enqueue --wait: code %d %s", code, errOut)
	}
	if p.fake.Stats().ByFault["echokey"] != 1 {
		t.Fatalf("fake stats %+v: the echokey fault did not fire", p.fake.Stats())
	}
	out, errOut, code := p.run("", "results", "--batch", "echo")
	if code != 0 || !strings.Contains(out, `[redacted]`) {
		t.Fatalf("results: code %d, out %s %s; want the echoed key redacted", code, out, errOut)
	}
	w.stop(t, 15*time.Second)
	for what, s := range map[string]string{"worker log": w.logs.String(), "export": out, "redis": redisDump(t, p)} {
		if strings.Contains(s, procKey) || strings.Contains(strings.ToLower(s), `\u0073\u006b`) {
			t.Errorf("the key (raw or escaped) is in the %s:\n%s", what, s)
		}
	}
}

// hostile serves bodies a careless upstream sends, chosen by the prompt;
// the "bad" ones only on their first call.
type hostile struct {
	mu    sync.Mutex
	calls map[string]int
}

func (h *hostile) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	b, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(b, &req)
	prompt := req.Messages[0].Content
	h.mu.Lock()
	h.calls[prompt]++
	n := h.calls[prompt]
	h.mu.Unlock()
	msg := `{"role":"assistant","content":"ok"}`
	usage := `{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}`
	choices := ""
	switch prompt {
	case "utf8":
		msg = `{"role":"assistant","content":"caf` + "\xe9 \xff" + `"}`
	case "float":
		usage = `{"prompt_tokens":5.0,"completion_tokens":2.0,"total_tokens":7.0}`
	case "string":
		usage = `{"prompt_tokens":"5","completion_tokens":"2"}`
	case "unreadable":
		usage = `{"prompt_tokens":"many","completion_tokens":2}`
	case "nullchoice":
		if n == 1 {
			choices = `[null]`
		}
	case "emptychoice":
		if n == 1 {
			choices = `[{}]`
		}
	case "emptymessage":
		if n == 1 {
			msg = `{"role":"assistant","content":null}`
		}
	case "echoerror":
		w.Header().Set("x-request-id", "req_"+procKey)
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":{"message":"Invalid key %s","type":"invalid_request_error","param":null,"code":null}}`, escapedKey())
		return
	}
	if choices == "" {
		choices = `[{"index":0,"message":` + msg + `,"finish_reason":"stop"}]`
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"chatcmpl-h","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":%s,"usage":%s}`, choices, usage)
}

// What a hostile upstream answers with 200: invalid UTF-8 is kept (U+FFFD)
// and exported as valid JSON lines; float or string usage is read and an
// unreadable one keeps the answer (one call each, never bought again);
// choices [null], [{}] and a message without content are malformed and
// retried. An error body echoing the key escaped is scrubbed from the dead
// letter's record, its asynq task and the export.
func TestHostileUpstreamBodies(t *testing.T) {
	h := &hostile{calls: map[string]int{}}
	up := httptest.NewServer(h)
	defer up.Close()
	p := newProcEnv(t, fakeupstream.Config{}, func(c *config.Config) { c.Upstream.BaseURL = up.URL + "/v1" })
	prompts := []string{"utf8", "float", "string", "unreadable", "nullchoice", "emptychoice", "emptymessage", "echoerror"}
	var in strings.Builder
	for _, pr := range prompts {
		fmt.Fprintf(&in, `{"custom_id":"%s","model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}]}`+"\n", pr, pr)
	}
	w := p.start("worker", "--concurrency", "4")
	if _, errOut, code := p.run(in.String(), "enqueue", "-", "--batch", "hostile", "--wait"); code != exitJobsFailed {
		t.Fatalf("enqueue --wait: code %d %s; want %d (the echoerror job dead-lettered)", code, errOut, exitJobsFailed)
	}
	path := filepath.Join(t.TempDir(), "out.jsonl")
	if _, errOut, code := p.run("", "results", "--batch", "hostile", "-o", path); code != 0 {
		t.Fatalf("results: %d %s", code, errOut)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.Valid(raw) {
		t.Errorf("the export is not valid UTF-8:\n%q", raw)
	}
	lines := map[string]jobs.OutputLine{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var line jobs.OutputLine
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("export line is not JSON: %v\n%s", err, l)
		}
		lines[line.CustomID] = line
	}
	if len(lines) != len(prompts) {
		t.Fatalf("%d export lines, want %d", len(lines), len(prompts))
	}
	if body := string(lines["utf8"].Response.Body); !strings.Contains(body, "caf\uFFFD \uFFFD") {
		t.Errorf("utf8 answer %s: want the text kept with U+FFFD", body)
	}
	store := results.NewStore(p.env.Client, p.env.Prefix, time.Hour)
	want := map[string]struct {
		calls int
		usage jobs.Usage
	}{
		"utf8": {1, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}}, "float": {1, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}},
		"string": {1, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}}, "unreadable": {1, jobs.Usage{}},
		"nullchoice": {2, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}}, "emptychoice": {2, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}},
		"emptymessage": {2, jobs.Usage{PromptTokens: 5, CompletionTokens: 2, TotalTokens: 7}},
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for pr, wnt := range want {
		line := lines[pr]
		r, err := store.Get(ctx(t), strings.TrimPrefix(line.ID, "batch_req_"))
		if err != nil || r.Status != jobs.StatusSucceeded {
			t.Errorf("%s: result %+v %v, want success", pr, r, err)
			continue
		}
		if h.calls[pr] != wnt.calls || r.Attempts != wnt.calls {
			t.Errorf("%s: %d upstream calls, %d attempts recorded; want %d", pr, h.calls[pr], r.Attempts, wnt.calls)
		}
		if r.Usage == nil || *r.Usage != wnt.usage {
			t.Errorf("%s: usage %+v, want %+v", pr, r.Usage, wnt.usage)
		}
	}
	dead := lines["echoerror"]
	if dead.Error == nil || dead.Response == nil || dead.Response.StatusCode != 400 {
		t.Errorf("echoerror line %+v: want the 400 dead letter", dead)
	}
	insp := asynq.NewInspector(p.env.Opt)
	defer insp.Close()
	info, err := insp.GetTaskInfo(p.env.Queue, strings.TrimPrefix(dead.ID, "batch_req_"))
	if err != nil || info.State != asynq.TaskStateArchived || len(info.Result) == 0 {
		t.Fatalf("echoerror task %+v %v: want archived with its failure record", info, err)
	}
	w.stop(t, 15*time.Second)
	for what, s := range map[string]string{"worker log": w.logs.String(), "export": string(raw), "redis": redisDump(t, p),
		"task": string(info.Result) + info.LastErr} {
		if strings.Contains(s, procKey) || strings.Contains(strings.ToLower(s), `\u0073\u006b`) {
			t.Errorf("the key (raw or escaped) is in the %s:\n%s", what, s)
		}
	}
}
