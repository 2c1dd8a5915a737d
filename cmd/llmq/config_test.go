package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/llmq/llmq/fakeupstream"
)

// A queue map in the YAML file replaces the default {llmq: 1}: `llmq config`
// shows exactly the queues served, and the running worker registers with
// asynq for those queues only (it used to drain the production queue "llmq"
// too).
func TestYAMLQueuesReplaceTheDefault(t *testing.T) {
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	out, errOut, code := p.run("", "config")
	if code != 0 {
		t.Fatalf("config: %d %s", code, errOut)
	}
	queues := section(out, "  queues:")
	if queues != "    "+p.env.Queue+": 1" {
		t.Errorf("config shows queues\n%s\nwant only %s: 1", queues, p.env.Queue)
	}

	w := p.start("worker", "--concurrency", "1")
	insp := asynq.NewInspector(p.env.Opt)
	defer insp.Close()
	var served map[string]int
	waitFor(t, "the worker to register with asynq", 20*time.Second, func() bool {
		servers, err := insp.Servers()
		if err != nil {
			return false
		}
		for _, s := range servers {
			if s.PID == w.w.PID {
				served = s.Queues
				return true
			}
		}
		return false
	})
	if len(served) != 1 || served[p.env.Queue] != 1 {
		t.Errorf("worker serves queues %v, want only {%s: 1}", served, p.env.Queue)
	}
	w.stop(t, 15*time.Second)
}

// section returns the indented lines under the line header of a YAML print.
func section(out, header string) string {
	var lines []string
	in := false
	indent := len(header) - len(strings.TrimLeft(header, " "))
	for _, l := range strings.Split(out, "\n") {
		if in {
			if len(l)-len(strings.TrimLeft(l, " ")) <= indent {
				break
			}
			lines = append(lines, l)
		}
		if l == header {
			in = true
		}
	}
	return strings.Join(lines, "\n")
}

// A Redis password never reaches the output: not in `llmq config`, not in
// the validation error of a bad configuration.
func TestConfigMasksRedisPassword(t *testing.T) {
	const password = "hunter2-redis-secret"
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	p.vars = append(p.vars, "LLMQ_REDIS_URL=redis://admin:"+password+"@127.0.0.1:1/0")
	out, errOut, code := p.run("", "config")
	if code != 0 {
		t.Fatalf("config: %d %s", code, errOut)
	}
	if strings.Contains(out+errOut, password) || !strings.Contains(out, "redis_url: redis://admin:") {
		t.Errorf("config output shows the password or no masked URL:\n%s%s", out, errOut)
	}

	p.vars = append(p.vars, "LLMQ_REDIS_URL=http://admin:"+password+"@127.0.0.1:1/0")
	_, errOut, code = p.run("", "config")
	if code == 0 || !strings.Contains(errOut, "redis_url") || strings.Contains(errOut, password) {
		t.Errorf("invalid redis_url: exit %d, stderr %q: want an error naming redis_url without the password", code, errOut)
	}
}

// Every map setting the file sets replaces its default: budgets keep only
// the file's entries (plus the unlimited default models fall back to),
// fallbacks are the file's.
func TestYAMLMapsReplaceDefaults(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "llmq.yaml")
	yml := "worker:\n  queues: {a: 2, b: 1}\nbudgets:\n  gpt-4o: {rpm: " + strconv.Itoa(60) + "}\nfallbacks:\n  gpt-4o: [gpt-4o-mini]\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newProcEnv(t, fakeupstream.Config{}, nil)
	p.vars = append(p.vars, "LLMQ_CONFIG="+path)
	out, errOut, code := p.run("", "config")
	if code != 0 {
		t.Fatalf("config: %d %s", code, errOut)
	}
	if q := section(out, "  queues:"); q != "    a: 2\n    b: 1" {
		t.Errorf("queues\n%s\nwant a: 2, b: 1 only", q)
	}
	if b := section(out, "budgets:"); !strings.Contains(b, "gpt-4o:") || !strings.Contains(b, "rpm: 60") || strings.Count(b, "rpm:") != 2 {
		t.Errorf("budgets\n%s\nwant gpt-4o and the unlimited default only", b)
	}
}
