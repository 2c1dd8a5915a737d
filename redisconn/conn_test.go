package redisconn_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/llmq/llmq/llmqtest"
	"github.com/llmq/llmq/redisconn"
)

const secret = "s3cr%2Ft-pw" // escaped: the parsed password is "s3cr/t-pw"

func TestParseForms(t *testing.T) {
	cases := []struct {
		url      string
		mode     redisconn.Mode
		addrs    []string
		db       int
		master   string
		tls      bool
		str      string
		redacted string
	}{
		{"redis://127.0.0.1:6379/0", redisconn.Single, []string{"127.0.0.1:6379"}, 0, "", false,
			"single addr=127.0.0.1:6379 db=0", "redis://127.0.0.1:6379/0"},
		{"redis://localhost", redisconn.Single, []string{"localhost:6379"}, 0, "", false,
			"single addr=localhost:6379 db=0", "redis://localhost:6379/0"},
		{"redis://:" + secret + "@10.0.0.1:6380/2?dial_timeout=3&read_timeout=500ms&pool_size=20", redisconn.Single,
			[]string{"10.0.0.1:6380"}, 2, "", false,
			"single addr=10.0.0.1:6380 db=2 password=xxxxx",
			"redis://:xxxxx@10.0.0.1:6380/2?dial_timeout=3s&read_timeout=500ms&pool_size=20"},
		{"rediss://app:" + secret + "@cache.example:6380?db=3", redisconn.Single, []string{"cache.example:6380"}, 3, "", true,
			"single tls addr=cache.example:6380 db=3 user=app password=xxxxx", "rediss://app:xxxxx@cache.example:6380/3"},
		{"redis://[::1]:7000/1", redisconn.Single, []string{"[::1]:7000"}, 1, "", false,
			"single addr=[::1]:7000 db=1", "redis://[::1]:7000/1"},
		{"unix://:" + secret + "@/run/redis.sock?db=4", redisconn.Single, []string{"/run/redis.sock"}, 4, "", false,
			"single addr=/run/redis.sock db=4 password=xxxxx", "unix://:xxxxx@/run/redis.sock?db=4"},
		{"redis+sentinel://:" + secret + "@s1:26379?addr=s2:26380&addr=s3&master_name=mymaster&db=1&sentinel_password=" + secret,
			redisconn.Sentinel, []string{"s1:26379", "s2:26380", "s3:26379"}, 1, "mymaster", false,
			"sentinel master=mymaster sentinels=s1:26379,s2:26380,s3:26379 db=1 password=xxxxx sentinel_password=xxxxx",
			"redis+sentinel://:xxxxx@s1:26379?addr=s2:26380&addr=s3:26379&master_name=mymaster&db=1&sentinel_password=xxxxx"},
		{"redis+sentinel://s1?master_name=m", redisconn.Sentinel, []string{"s1:26379"}, 0, "m", false,
			"sentinel master=m sentinels=s1:26379 db=0", "redis+sentinel://s1:26379?master_name=m&db=0"},
		{"redis+cluster://:" + secret + "@n1:7000?addr=n2:7001&addr=n3:7002", redisconn.Cluster,
			[]string{"n1:7000", "n2:7001", "n3:7002"}, 0, "", false,
			"cluster nodes=n1:7000,n2:7001,n3:7002 password=xxxxx",
			"redis+cluster://:xxxxx@n1:7000?addr=n2:7001&addr=n3:7002"},
		{"rediss+cluster://n1:7000/0", redisconn.Cluster, []string{"n1:7000"}, 0, "", true,
			"cluster tls nodes=n1:7000", "rediss+cluster://n1:7000"},
	}
	for _, tc := range cases {
		t.Run(tc.str, func(t *testing.T) {
			c, err := redisconn.Parse(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			if c.Mode != tc.mode || strings.Join(c.Addrs, ",") != strings.Join(tc.addrs, ",") || c.DB != tc.db ||
				c.MasterName != tc.master || c.TLS != tc.tls {
				t.Errorf("Parse = %+v", *c)
			}
			if got := c.String(); got != tc.str {
				t.Errorf("String = %q, want %q", got, tc.str)
			}
			if got := c.Redacted(); got != tc.redacted {
				t.Errorf("Redacted = %q, want %q", got, tc.redacted)
			}
			// The redacted form parses back to the same connection.
			back, err := redisconn.Parse(c.Redacted())
			if err != nil || back.String() != c.String() {
				t.Errorf("Parse(Redacted) = %v, %v", back, err)
			}
			for _, shown := range []string{c.String(), c.Redacted(), fmt.Sprintf("%v %+v %#v %s %v %+v %#v", c, c, c, c, *c, *c, *c)} {
				if strings.Contains(shown, "s3cr") {
					t.Errorf("password shown: %s", shown)
				}
			}
		})
	}
}

func TestParseClients(t *testing.T) {
	for _, tc := range []struct {
		url    string
		opt    asynq.RedisConnOpt
		client any
	}{
		{"redis://:pw@h:1/2", asynq.RedisClientOpt{Network: "tcp", Addr: "h:1", Password: "pw", DB: 2}, &redis.Client{}},
		{"redis+sentinel://:pw@s:2?master_name=m&db=3&addr=t:4", asynq.RedisFailoverClientOpt{
			MasterName: "m", SentinelAddrs: []string{"s:2", "t:4"}, Password: "pw", DB: 3}, &redis.Client{}},
	} {
		c, err := redisconn.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%#v", c.AsynqOpt()); got != fmt.Sprintf("%#v", tc.opt) {
			t.Errorf("%s: AsynqOpt = %s\nwant %s", tc.url, got, fmt.Sprintf("%#v", tc.opt))
		}
		cl := c.NewClient()
		if fmt.Sprintf("%T", cl) != fmt.Sprintf("%T", tc.client) {
			t.Errorf("%s: NewClient = %T, want %T", tc.url, cl, tc.client)
		}
		_ = cl.Close()
	}
	c, _ := redisconn.Parse("redis+cluster://:pw@n:3?addr=o:4&write_timeout=2s")
	o, ok := c.AsynqOpt().(redisconn.ClusterOpt)
	if !ok || fmt.Sprint(o.Addrs) != "[n:3 o:4]" || o.Password != "pw" || o.WriteTimeout != 2*time.Second {
		t.Errorf("cluster AsynqOpt = %T %+v", c.AsynqOpt(), o.Addrs)
	}
	if cl, ok := o.MakeRedisClient().(*redis.ClusterClient); !ok {
		t.Errorf("cluster MakeRedisClient = %T", o.MakeRedisClient())
	} else {
		_ = cl.Close()
	}
	c, _ = redisconn.Parse("rediss://h:1")
	if o := c.AsynqOpt().(asynq.RedisClientOpt); o.TLSConfig == nil || o.TLSConfig.ServerName != "h" {
		t.Errorf("rediss TLS = %+v", o.TLSConfig)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		url  string
		part string
		kind error
		msg  string
	}{
		{"http://h:1", "scheme", redisconn.ErrUnsupported, `redis url: scheme "http": not supported (want redis, rediss, unix, redis+sentinel or redis+cluster)`},
		{"h:6379", "scheme", redisconn.ErrUnsupported, ""},
		{"127.0.0.1:6379", "url", redisconn.ErrInvalid, ""},
		{"", "scheme", redisconn.ErrMissing, ""},
		{"redis://:" + secret + "@/0", "host", redisconn.ErrMissing, "redis url: host: missing (want HOST[:PORT] after //)"},
		{"redis://:" + secret + "@h:99999/0", "port", redisconn.ErrInvalid, `redis url: port "99999": invalid (want a number from 1 to 65535)`},
		{"redis://:" + secret + "@h:1/x", "db", redisconn.ErrInvalid, `redis url: db "x": invalid (want a database number from 0)`},
		{"redis://:" + secret + "@h:1/1?db=2", "db", redisconn.ErrInvalid, ""},
		{"redis://:" + secret + "@h:1?addr=h:2", "addr", redisconn.ErrUnsupported, ""},
		{"redis://:" + secret + "@h:1?master_name=m", "master_name", redisconn.ErrUnknownOption, ""},
		{"redis://:" + secret + "@h:1?dial_timeout=soon", "dial_timeout", redisconn.ErrInvalid, ""},
		{"redis://:" + secret + "@h:1?pool_size=0", "pool_size", redisconn.ErrInvalid, ""},
		{"redis+sentinel://:" + secret + "@s:1?addr=t:2", "master_name", redisconn.ErrMissing,
			"redis url: master_name: missing (redis+sentinel URLs need master_name=NAME)"},
		{"redis+sentinel://:" + secret + "@s:1?master_name=m&addr=t:x", "port", redisconn.ErrInvalid, ""},
		{"redis+sentinel://:" + secret + "@s:1?master_name=m&addr=::1", "addr", redisconn.ErrInvalid, ""},
		{"redis+cluster://:" + secret + "@n:1/3", "db", redisconn.ErrUnsupported, `redis url: db "3": not supported (a cluster has only db 0)`},
		{"redis+cluster://:" + secret + "@n:1?sentinel_password=x", "sentinel_password", redisconn.ErrUnknownOption, ""},
		{"redis://:s3cr%zz@h:1", "url", redisconn.ErrInvalid, ""},
		{"unix://", "path", redisconn.ErrMissing, ""},
	} {
		_, err := redisconn.Parse(tc.url)
		var e *redisconn.Error
		if !errors.As(err, &e) || e.Part != tc.part || !errors.Is(err, tc.kind) {
			t.Errorf("Parse(%q) = %v, want part %s, %v", tc.url, err, tc.part, tc.kind)
			continue
		}
		if tc.msg != "" && err.Error() != tc.msg {
			t.Errorf("Parse(%q) = %q, want %q", tc.url, err, tc.msg)
		}
		if strings.Contains(err.Error(), "s3cr") {
			t.Errorf("Parse(%q): error shows the password: %v", tc.url, err)
		}
	}
}

// TestClientsReachRedis connects both clients built from one URL to the test
// Redis: llmq's keys and asynq's queue land in the same server.
func TestClientsReachRedis(t *testing.T) {
	env := llmqtest.Redis(t)
	c, err := redisconn.Parse(env.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rdb := c.NewClient()
	defer rdb.Close()
	key := env.Prefix + ":probe"
	if err := rdb.Set(ctx, key, "1", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	ins := asynq.NewInspector(c.AsynqOpt())
	defer ins.Close()
	if _, err := ins.Queues(); err != nil {
		t.Fatal(err)
	}
	if v, err := env.Client.Get(ctx, key).Result(); err != nil || v != "1" {
		t.Errorf("key written through NewClient: %q, %v", v, err)
	}
}
