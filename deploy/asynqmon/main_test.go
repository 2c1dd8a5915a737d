package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/llmq/llmq/fakeupstream"
	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/producer"
	"github.com/llmq/llmq/upstream"
	"github.com/llmq/llmq/worker"
)

// What an operator sees in asynqmon for llmq jobs: a real worker
// dead-letters one job (upstream 400) and completes another; asynqmon's API
// shows the archived task's failure reason, both payloads as readable
// summaries with the prompt cut short, and the result records.
func TestAsynqmonShowsLlmqJobsReadably(t *testing.T) {
	env := llmqtest.Redis(t)
	const key = "sk-asynqmon-test-key-0123456789"
	fake, err := fakeupstream.New(fakeupstream.Config{APIKey: key, Faults: "400"})
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(fake.Handler())
	defer func() { fake.Close(); up.Close() }()

	client, err := upstream.New(upstream.Config{BaseURL: up.URL + "/v1", Key: upstream.StaticKey(key)})
	if err != nil {
		t.Fatal(err)
	}
	rdb := env.NewClient()
	defer rdb.Close()
	w, err := worker.New(worker.Config{Redis: rdb, Upstream: client, Prefix: env.Prefix, Concurrency: 1,
		Queues: map[string]int{env.Queue: 1}, PollInterval: 50 * time.Millisecond, ShutdownTimeout: 5 * time.Second,
		Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	p, err := producer.New(env.Opt, producer.WithQueue(env.Queue), producer.WithPrefix(env.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	long := "Summarise this: " + strings.Repeat("lorem ipsum ", 100) + "THE-END-OF-THE-PROMPT"
	for _, id := range []string{"dead", "fine"} { // the first call (job "dead") gets the 400
		b, _ := json.Marshal(map[string]any{"model": "gpt-4o-mini", "max_tokens": 16,
			"messages": []map[string]string{{"role": "user", "content": long}}})
		if _, err := p.Enqueue(context.Background(), &jobs.Job{ID: id, Body: b}); err != nil {
			t.Fatal(err)
		}
		waitState(t, env, id, map[string]asynq.TaskState{"dead": asynq.TaskStateArchived, "fine": asynq.TaskStateCompleted}[id])
	}

	mon := httptest.NewServer(withFailureRecords(newHandler(env.Opt, options{promptChars: 40})))
	defer mon.Close()
	if err := probe(context.Background(), strings.TrimPrefix(mon.URL, "http://")); err != nil {
		t.Errorf("probe of a healthy asynqmon: %v", err)
	}

	var archived struct {
		Tasks []struct {
			ID       string `json:"id"`
			Payload  string `json:"payload"`
			ErrorMsg string `json:"error_message"`
		} `json:"tasks"`
	}
	getJSON(t, mon.URL+"/api/queues/"+env.Queue+"/archived_tasks", &archived)
	if len(archived.Tasks) != 1 || archived.Tasks[0].ID != "dead" {
		t.Fatalf("archived tasks %+v, want the one dead-lettered job", archived.Tasks)
	}
	dead := archived.Tasks[0]
	if !strings.HasPrefix(dead.ErrorMsg, "dead_letter: upstream 400") {
		t.Errorf("archived task's reason %q, want the worker's dead_letter reason", dead.ErrorMsg)
	}
	checkPayload(t, dead.Payload, key)

	for _, id := range []string{"dead", "fine"} {
		var task struct {
			Payload string `json:"payload"`
			Result  string `json:"result"`
			State   string `json:"state"`
		}
		getJSON(t, mon.URL+"/api/queues/"+env.Queue+"/tasks/"+id, &task)
		if id == "dead" {
			// asynqmon's page shows the result of completed tasks only:
			// a dead letter's failure record is shown with its payload.
			var view struct {
				Job           json.RawMessage `json:"job"`
				FailureRecord jobs.Result     `json:"failure_record"`
			}
			if err := json.Unmarshal([]byte(task.Payload), &view); err != nil || view.FailureRecord.Status != jobs.StatusFailed ||
				view.FailureRecord.Error == nil || view.FailureRecord.Error.Status != 400 || view.FailureRecord.Attempts != 1 {
				t.Fatalf("dead letter's payload view %s (%v): want the job and its failure record", task.Payload, err)
			}
			task.Payload = string(view.Job)
		}
		checkPayload(t, task.Payload, key)
		var res jobs.Result
		if err := json.Unmarshal([]byte(task.Result), &res); err != nil || res.JobID != id {
			t.Fatalf("task %s result is not the llmq result record: %v\n%s", id, err, task.Result)
		}
		switch id {
		case "dead":
			if res.Status != jobs.StatusFailed || res.Error == nil || res.Error.Status != 400 {
				t.Errorf("dead job's result %+v", res)
			}
		case "fine":
			if res.Status != jobs.StatusSucceeded || res.Usage == nil || !strings.Contains(task.Result, "chat.completion") {
				t.Errorf("completed job's result %s", task.Result)
			}
		}
	}
}

// checkPayload asserts a payload as asynqmon shows it: the job summary as
// JSON, the prompt cut to 40 characters, no key.
func checkPayload(t *testing.T, payload, key string) {
	t.Helper()
	var sum struct {
		ID       string `json:"id"`
		Model    string `json:"model"`
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal([]byte(payload), &sum); err != nil {
		t.Fatalf("payload is not readable JSON: %v\n%s", err, payload)
	}
	if sum.Model != "gpt-4o-mini" || len(sum.Messages) != 1 || len([]rune(sum.Messages[0].Content)) != 41 {
		t.Errorf("payload summary %s: want the model and the message cut to 40 characters + …", payload)
	}
	if strings.Contains(payload, "THE-END-OF-THE-PROMPT") || strings.Contains(payload, key) {
		t.Errorf("payload shows the whole prompt or the key: %s", payload)
	}
}

func waitState(t *testing.T, env *llmqtest.Env, id string, state asynq.TaskState) {
	t.Helper()
	insp := asynq.NewInspector(env.Opt)
	defer insp.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := insp.GetTaskInfo(env.Queue, id)
		if err == nil && info.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not become %v (last: %+v, %v)", id, state, info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, b)
	}
}

func TestFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{"LLMQ_REDIS_URL": "redis://redis:6379/0", "ASYNQMON_READ_ONLY": "true", "ASYNQMON_PROMPT_CHARS": "80"}
	o, err := parse([]string{"--addr", ":9999"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != ":9999" || o.redisURL != "redis://redis:6379/0" || !o.readOnly || o.promptChars != 80 {
		t.Errorf("options %+v", o)
	}
	if _, err := parse([]string{"--prompt-chars", "0"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("--prompt-chars 0 accepted")
	}
}
