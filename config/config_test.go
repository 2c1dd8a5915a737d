package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// loadYAML loads the configuration of a file holding yml (and no env).
func loadYAML(t *testing.T, yml string) Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "llmq.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(env(map[string]string{"LLMQ_CONFIG": path}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDefaultsMatchDesign(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream.ConnectTimeout != 5*time.Second || c.Upstream.ResponseHeaderTimeout != 15*time.Second {
		t.Errorf("timeouts = %v/%v, want 5s/15s", c.Upstream.ConnectTimeout, c.Upstream.ResponseHeaderTimeout)
	}
	if c.Retry != (Retry{Attempts: 5, Base: time.Second, Cap: time.Minute, RetryAfterCap: 2 * time.Minute}) {
		t.Errorf("retry = %+v", c.Retry)
	}
	if c.Breaker != (Breaker{Failures: 5, FailureRate: 50, MinCalls: 20, Window: time.Minute, Open: 30 * time.Second}) {
		t.Errorf("breaker = %+v", c.Breaker)
	}
	if c.RedisURL != "redis://127.0.0.1:6379/0" || c.Upstream.BaseURL != "https://api.openai.com/v1" {
		t.Errorf("urls = %q %q", c.RedisURL, c.Upstream.BaseURL)
	}
}

func TestFileThenEnvPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "llmq.yaml")
	yml := "redis_url: redis://10.0.0.1:6379/2\nretry:\n  attempts: 7\n  base: 250ms\nbudgets:\n  default: {rpm: 100, tpm: 1000}\n  gpt-4o: {rpm: 5, tpm: 50, burst: 10}\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(env(map[string]string{"LLMQ_CONFIG": path, "LLMQ_REDIS_URL": "redis://127.0.0.1:6380/1", "LLMQ_TPM": "42"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisURL != "redis://127.0.0.1:6380/1" {
		t.Errorf("env must override file: redis_url = %q", c.RedisURL)
	}
	if c.Retry.Attempts != 7 || c.Retry.Base != 250*time.Millisecond || c.Retry.Cap != time.Minute {
		t.Errorf("retry = %+v, want file values over defaults", c.Retry)
	}
	if got := c.Budgets["default"]; got != (Budget{RPM: 100, TPM: 42}) {
		t.Errorf("default budget = %+v, want rpm from file, tpm from env", got)
	}
	if got := c.Budgets["gpt-4o"]; got != (Budget{RPM: 5, TPM: 50, Burst: 10}) {
		t.Errorf("gpt-4o budget = %+v", got)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	for _, tc := range []struct{ yml, env, want string }{
		{"retry:\n  atempts: 3\n", "", "atempts"},
		{"worker:\n  concurrency: 0\n", "", "worker.concurrency"},
		{"retry:\n  base: -1s\n", "", "retry.base"},
		{"", "notanumber", "LLMQ_RPM"},
		{"fallbacks:\n  gpt-4o: [a, b, c, d, e, f, g, h, i]\n", "", "fallbacks.gpt-4o: must list at most 8 models, got 9"},
	} {
		if err := os.WriteFile(path, []byte(tc.yml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(env(map[string]string{"LLMQ_CONFIG": path, "LLMQ_RPM": tc.env}))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("yaml %q env %q: err = %v, want it to name %s", tc.yml, tc.env, err, tc.want)
		}
	}
}

func TestPrintMasksKey(t *testing.T) {
	c := Default()
	c.Upstream.APIKey = "sk-secret-abcdefghijklmnop"
	var buf bytes.Buffer
	if err := c.Print(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "secret") || strings.Contains(out, "mnop") {
		t.Fatalf("key leaked in config print:\n%s", out)
	}
	for _, want := range []string{"connect_timeout: 5s", "attempts: 5", "failures: 5", "retry_after_cap: 2m0s", "api key: from OPENAI_API_KEY"} {
		if !strings.Contains(out, want) {
			t.Errorf("config print lacks %q:\n%s", want, out)
		}
	}
}

func TestYAMLCollectionsReplaceDefaults(t *testing.T) {
	c := loadYAML(t, "worker:\n  queues: {demo: 1}\nbudgets:\n  gpt-4o: {rpm: 5}\n")
	if len(c.Worker.Queues) != 1 || c.Worker.Queues["demo"] != 1 {
		t.Errorf("queues = %v, want only demo", c.Worker.Queues)
	}
	if len(c.Budgets) != 2 || c.Budgets["gpt-4o"].RPM != 5 || c.Budgets[DefaultBudget] != (Budget{}) {
		t.Errorf("budgets = %v, want gpt-4o and the unlimited default", c.Budgets)
	}
	// A file that does not name a map keeps the default.
	if c = loadYAML(t, "retry: {attempts: 3}\n"); c.Worker.Queues[DefaultQueue] != 1 {
		t.Errorf("queues = %v, want the default", c.Worker.Queues)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://:pw123@h:6379/0":                        "redis://:xxxxx@h:6379/0",
		"redis://user:pw123@h:6379/0":                    "redis://user:xxxxx@h:6379/0",
		"redis://h:6379/0":                               "redis://h:6379/0",
		"redis://h:6379/0?password=pw123":                "redis://h:6379/0?password=xxxxx",
		"redis-sentinel://h:1/0?sentinel_password=pw123": "redis-sentinel://h:1/0?sentinel_password=xxxxx",
		"redis://u:pw123@h:6379/%zz":                     "redis://xxxxx@h:6379/%zz",
	} {
		if got := RedactURL(in); got != want || strings.Contains(got, "pw123") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
