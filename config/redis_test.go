package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/llmq/llmq/redisconn"
)

// TestRedisURLForms: every URL form is accepted, and Print shows the mode
// and nodes with the password masked.
func TestRedisURLForms(t *testing.T) {
	for _, tc := range []struct{ url, line string }{
		{"redis://:hunter2@10.0.0.1:6379/1", "# redis: single addr=10.0.0.1:6379 db=1 password=xxxxx"},
		{"redis+sentinel://:hunter2@s1:26379?addr=s2:26379&master_name=llmq", "# redis: sentinel master=llmq sentinels=s1:26379,s2:26379 db=0 password=xxxxx"},
		{"redis+cluster://:hunter2@n1:7000?addr=n2:7001", "# redis: cluster nodes=n1:7000,n2:7001 password=xxxxx"},
	} {
		c := Default()
		c.RedisURL = tc.url
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		var buf bytes.Buffer
		if err := c.Print(&buf); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		if strings.Contains(out, "hunter2") {
			t.Errorf("password shown:\n%s", out)
		}
		if !strings.Contains(out, tc.line+"\n") || !strings.Contains(out, "redis_url: ") {
			t.Errorf("print lacks %q:\n%s", tc.line, out)
		}
	}
}

// TestRedisURLErrors: a URL llmq cannot use fails validation with a typed
// error naming the part, never the password.
func TestRedisURLErrors(t *testing.T) {
	c := Default()
	c.RedisURL = "redis+sentinel://:hunter2@s1:26379"
	err := c.Validate()
	var e *redisconn.Error
	if !errors.As(err, &e) || e.Part != "master_name" || !errors.Is(err, redisconn.ErrMissing) {
		t.Fatalf("Validate = %v, want a master_name error", err)
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "redis_url") {
		t.Errorf("Validate = %v", err)
	}
}
