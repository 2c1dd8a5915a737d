// Command llmq-asynqmon is asynqmon, asynq's web UI, built for llmq: a
// completion job's payload shows as a readable summary (metadata, model,
// each message cut to --prompt-chars characters; jobs carry no credentials)
// instead of raw bytes, and its result as the stored result record with the
// response body cut short. Archived (dead-lettered) tasks show the reason
// the worker gave, e.g. "dead_letter: upstream 400 invalid_request_error
// ...". Everything else is stock asynqmon v0.7.2, mounted as an
// http.Handler.
//
//	llmq-asynqmon --addr :8080 --redis-url redis://redis:6379/0 [--prometheus-addr http://prometheus:9090] [--read-only]
//	llmq-asynqmon --probe   # container health check
//
// Every flag has an environment variable: LLMQ_REDIS_URL, ASYNQMON_ADDR,
// PROMETHEUS_ADDR, ASYNQMON_READ_ONLY=true, ASYNQMON_PROMPT_CHARS.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"

	"github.com/llmq/llmq/jobs"
	"github.com/llmq/llmq/redisconn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "llmq-asynqmon:", err)
		os.Exit(1)
	}
}

// options are the command's settings.
type options struct {
	addr, redisURL, prometheusAddr string
	readOnly, probe                bool
	promptChars                    int
}

func parse(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	var o options
	fs := flag.NewFlagSet("llmq-asynqmon", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", env("ASYNQMON_ADDR", ":8080"), "listen address (env ASYNQMON_ADDR)")
	fs.StringVar(&o.redisURL, "redis-url", env("LLMQ_REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis the fleet uses (env LLMQ_REDIS_URL)")
	fs.StringVar(&o.prometheusAddr, "prometheus-addr", env("PROMETHEUS_ADDR", ""), "Prometheus for asynqmon's metrics view, e.g. http://prometheus:9090 (env PROMETHEUS_ADDR)")
	ro, _ := strconv.ParseBool(env("ASYNQMON_READ_ONLY", "false"))
	fs.BoolVar(&o.readOnly, "read-only", ro, "view only: no deleting, running or archiving tasks (env ASYNQMON_READ_ONLY)")
	chars, err := strconv.Atoi(env("ASYNQMON_PROMPT_CHARS", "200"))
	if err != nil {
		return o, fmt.Errorf("ASYNQMON_PROMPT_CHARS=%q: must be a whole number of characters", getenv("ASYNQMON_PROMPT_CHARS"))
	}
	fs.IntVar(&o.promptChars, "prompt-chars", chars, "characters of each message shown (env ASYNQMON_PROMPT_CHARS)")
	fs.BoolVar(&o.probe, "probe", false, "do not serve: exit 0 if the asynqmon on --addr answers and reaches Redis (container health check)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.promptChars < 1 {
		return o, fmt.Errorf("--prompt-chars must be at least 1, got %d", o.promptChars)
	}
	return o, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	o, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	if o.probe {
		return probe(ctx, o.addr)
	}
	conn, err := redisconn.Parse(o.redisURL)
	if err != nil {
		return fmt.Errorf("--redis-url (LLMQ_REDIS_URL): %w", err)
	}
	h := newHandler(conn.AsynqOpt(), o)
	defer h.Close()
	srv := &http.Server{Addr: o.addr, Handler: withFailureRecords(h), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.ListenAndServe() }()
	fmt.Fprintf(stderr, "llmq-asynqmon: serving asynqmon on %s\n", o.addr)
	select {
	case err := <-done:
		return fmt.Errorf("serve on %s: %w", o.addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// probe asks the asynqmon on addr for its queue list, which needs Redis.
func probe(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("probe: --addr %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(host, port) + "/api/queues"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("probe %s: %s: %s (is Redis reachable?)", url, resp.Status, b)
	}
	return nil
}

// newHandler returns asynqmon with llmq's formatters.
func newHandler(opt asynq.RedisConnOpt, o options) *asynqmon.HTTPHandler {
	return asynqmon.New(asynqmon.Options{
		RootPath:          "/",
		RedisConnOpt:      opt,
		PayloadFormatter:  payloadFormatter(o.promptChars),
		ResultFormatter:   resultFormatter(o.promptChars * 4),
		PrometheusAddress: o.prometheusAddr,
		ReadOnly:          o.readOnly,
	})
}

// payloadFormatter shows a completion job as its Summary; other task
// types as asynqmon would.
func payloadFormatter(chars int) asynqmon.PayloadFormatter {
	return asynqmon.PayloadFormatterFunc(func(taskType string, payload []byte) string {
		if taskType != jobs.TaskType {
			return asynqmon.DefaultPayloadFormatter.FormatPayload(taskType, payload)
		}
		job, err := jobs.Decode(payload)
		if err != nil {
			return fmt.Sprintf("undecodable llmq job (%d bytes): %v", len(payload), err)
		}
		b, err := json.MarshalIndent(job.Summary(chars), "", "  ")
		if err != nil {
			return fmt.Sprintf("llmq job %s: summary: %v", job.ID, err)
		}
		return string(b)
	})
}

// resultFormatter shows a completion job's result record with its
// response body cut to bodyBytes characters.
func resultFormatter(bodyBytes int) asynqmon.ResultFormatter {
	return asynqmon.ResultFormatterFunc(func(taskType string, result []byte) string {
		if taskType != jobs.TaskType {
			return asynqmon.DefaultResultFormatter.FormatResult(taskType, result)
		}
		var r jobs.Result
		if err := json.Unmarshal(result, &r); err != nil {
			return asynqmon.DefaultResultFormatter.FormatResult(taskType, result)
		}
		// The response body stays JSON when short; a long one is cut and
		// shown as text.
		view := struct {
			jobs.Result
			Response any `json:"response,omitempty"`
		}{Result: r}
		if len(r.Response) > 0 {
			view.Response = r.Response
			if rs := []rune(string(r.Response)); len(rs) > bodyBytes {
				view.Response = string(rs[:bodyBytes]) + "…"
			}
		}
		b, err := json.MarshalIndent(view, "", "  ")
		if err != nil {
			return asynqmon.DefaultResultFormatter.FormatResult(taskType, result)
		}
		return string(b)
	})
}

// withFailureRecords shows a dead letter's failure record on its task
// page. asynqmon's UI shows a task's result only when the task completed,
// so for an archived task with a result (llmq writes the failure record:
// reason, attempts, last upstream body, key scrubbed) the task API's
// payload becomes {"job": <summary>, "failure_record": <record>}.
func withFailureRecords(mon http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", mon)
	mux.HandleFunc("GET /api/queues/{queue}/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		mon.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if rec.Code == http.StatusOK {
			body = foldFailureRecord(body)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
	return mux
}

// foldFailureRecord moves an archived task's result into its payload view;
// any other answer is returned as is.
func foldFailureRecord(body []byte) []byte {
	var task map[string]json.RawMessage
	if json.Unmarshal(body, &task) != nil {
		return body
	}
	var state, payload, result string
	if json.Unmarshal(task["state"], &state) != nil || state != "archived" ||
		json.Unmarshal(task["result"], &result) != nil || result == "" {
		return body
	}
	_ = json.Unmarshal(task["payload"], &payload)
	asJSON := func(s string) any {
		if json.Valid([]byte(s)) {
			return json.RawMessage(s)
		}
		return s
	}
	view, err := json.MarshalIndent(map[string]any{"job": asJSON(payload), "failure_record": asJSON(result)}, "", "  ")
	if err != nil {
		return body
	}
	task["payload"], _ = json.Marshal(string(view))
	out, err := json.Marshal(task)
	if err != nil {
		return body
	}
	return out
}
