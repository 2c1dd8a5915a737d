package redisconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Default ports when a URL names a host without one.
const (
	// DefaultPort is a Redis server's or cluster node's port.
	DefaultPort = "6379"
	// DefaultSentinelPort is a Sentinel's port.
	DefaultSentinelPort = "26379"
)

// Protocol is the RESP version of the clients NewClient makes (the
// worker's, which its asynq server shares, and every Redis Cluster
// connection): RESP2. llmq uses no RESP3 feature (push notifications,
// client-side caching; go-redis's maintenance notifications for Redis
// Enterprise and Cloud are off with it), and go-redis checks every RESP3
// reply for pending push notifications, a cost on each of the worker's
// round trips. AsynqOpt's single-server and Sentinel options leave asynq
// its default.
const Protocol = 2

// masked replaces a password wherever a Conn is shown.
const masked = "xxxxx" // as net/url.URL.Redacted

// Mode is how llmq reaches Redis.
type Mode string

// The modes a URL selects by its scheme.
const (
	// Single is one server: redis://, rediss://, unix://.
	Single Mode = "single"
	// Sentinel is a master found through Sentinels: redis+sentinel://.
	Sentinel Mode = "sentinel"
	// Cluster is a Redis Cluster: redis+cluster://.
	Cluster Mode = "cluster"
)

// Conn is a parsed Redis URL: everything needed to connect, in one value.
// Its String and Redacted forms, and fmt's %v, %+v and %#v of a Conn or a
// *Conn, never show a password (String and GoString have value receivers
// for that reason).
type Conn struct {
	// Mode is single, sentinel or cluster.
	Mode Mode
	// Network is "tcp", or "unix" for a socket (Single only).
	Network string
	// Addrs is the server (Single: one address or socket path), the
	// Sentinels (Sentinel) or the seed nodes (Cluster).
	Addrs []string
	// MasterName is the Sentinel master's name (Sentinel only).
	MasterName string
	// DB is the database number (always 0 in Cluster mode).
	DB int
	// Username is the ACL user, if any.
	Username string
	// TLS is true for the rediss schemes.
	TLS bool
	// DialTimeout, ReadTimeout and WriteTimeout are the clients' timeouts;
	// zero means go-redis's defaults.
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
	// PoolSize is the connection pool size per node; zero means go-redis's
	// default.
	PoolSize int

	password         string
	sentinelPassword string
}

// schemes maps each accepted scheme to its mode and TLS.
var schemes = map[string]struct {
	mode Mode
	tls  bool
}{
	"redis":           {Single, false},
	"rediss":          {Single, true},
	"unix":            {Single, false},
	"redis+sentinel":  {Sentinel, false},
	"rediss+sentinel": {Sentinel, true},
	"redis+cluster":   {Cluster, false},
	"rediss+cluster":  {Cluster, true},
}

const wantScheme = "want redis, rediss, unix, redis+sentinel or redis+cluster"

// Parse reads a Redis URL in one of the forms the package documents.
func Parse(raw string) (*Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, parseError(err)
	}
	s, ok := schemes[u.Scheme]
	if !ok {
		if u.Scheme == "" {
			return nil, &Error{Part: "scheme", Err: ErrMissing, Detail: wantScheme}
		}
		return nil, &Error{Part: "scheme", Value: u.Scheme, Err: ErrUnsupported, Detail: wantScheme}
	}
	c := &Conn{Mode: s.mode, TLS: s.tls, Network: "tcp"}
	if u.User != nil {
		c.Username = u.User.Username()
		c.password, _ = u.User.Password()
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, &Error{Part: "query", Err: ErrInvalid, Detail: "want name=value pairs joined by &"}
	}
	if err := c.readAddrs(u, q); err != nil {
		return nil, err
	}
	if err := c.readDB(u, q); err != nil {
		return nil, err
	}
	if err := c.readOptions(q); err != nil {
		return nil, err
	}
	return c, nil
}

// parseError keeps the part of a url.Parse error that names no secret: the
// URL itself (with its password) is dropped, and so is a bad %-escape, which
// may be part of the password.
func parseError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ee url.EscapeError
	if errors.As(err, &ee) {
		return &Error{Part: "url", Err: ErrInvalid, Detail: "a %-escape is malformed"}
	}
	var he url.InvalidHostError
	if errors.As(err, &he) {
		return &Error{Part: "host", Err: ErrInvalid, Detail: err.Error()}
	}
	return &Error{Part: "url", Err: ErrInvalid, Detail: err.Error()}
}

// readAddrs reads the host (or socket path) and any addr options.
func (c *Conn) readAddrs(u *url.URL, q url.Values) error {
	if u.Scheme == "unix" {
		if u.Path == "" {
			return &Error{Part: "path", Err: ErrMissing, Detail: "want unix:///path/to/redis.sock"}
		}
		c.Network, c.Addrs = "unix", []string{u.Path}
		u.Path = ""
		return nil
	}
	port := DefaultPort
	if c.Mode == Sentinel {
		port = DefaultSentinelPort
	}
	if u.Hostname() == "" {
		return &Error{Part: "host", Err: ErrMissing, Detail: "want HOST[:PORT] after //"}
	}
	first, err := hostPort(u.Host, port, "host")
	if err != nil {
		return err
	}
	c.Addrs = []string{first}
	extra := q["addr"]
	delete(q, "addr")
	if len(extra) > 0 && c.Mode == Single {
		return &Error{Part: "addr", Err: ErrUnsupported, Detail: "only redis+sentinel and redis+cluster take several addresses"}
	}
	for _, a := range extra {
		a, err := hostPort(a, port, "addr")
		if err != nil {
			return err
		}
		c.Addrs = append(c.Addrs, a)
	}
	return nil
}

// hostPort checks a HOST[:PORT] and adds the default port.
func hostPort(hp, defaultPort, part string) (string, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		// No port: the whole thing is the host (an IPv6 literal keeps its brackets off).
		host, port = strings.TrimSuffix(strings.TrimPrefix(hp, "["), "]"), defaultPort
		if strings.Contains(host, ":") && !strings.HasPrefix(hp, "[") {
			return "", &Error{Part: part, Value: hp, Err: ErrInvalid, Detail: "want HOST[:PORT], an IPv6 address in brackets"}
		}
	}
	if host == "" || strings.ContainsAny(host, "/@?# ") {
		return "", &Error{Part: part, Value: hp, Err: ErrInvalid, Detail: "want HOST[:PORT]"}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", &Error{Part: "port", Value: port, Err: ErrInvalid, Detail: "want a number from 1 to 65535"}
	}
	return net.JoinHostPort(host, port), nil
}

// readDB reads the database number from the path (/N) or the db option.
func (c *Conn) readDB(u *url.URL, q url.Values) error {
	path := strings.Trim(u.Path, "/")
	opt := q.Get("db")
	delete(q, "db")
	if path != "" && opt != "" && path != opt {
		return &Error{Part: "db", Value: opt, Err: ErrInvalid, Detail: "the path says db " + path}
	}
	v := path
	if v == "" {
		v = opt
	}
	if v == "" {
		return nil
	}
	db, err := strconv.Atoi(v)
	if err != nil || db < 0 {
		return &Error{Part: "db", Value: v, Err: ErrInvalid, Detail: "want a database number from 0"}
	}
	if c.Mode == Cluster && db != 0 {
		return &Error{Part: "db", Value: v, Err: ErrUnsupported, Detail: "a cluster has only db 0"}
	}
	c.DB = db
	return nil
}

// readOptions reads the query options of the URL's mode and refuses any
// other.
func (c *Conn) readOptions(q url.Values) error {
	durations := map[string]*time.Duration{
		"dial_timeout": &c.DialTimeout, "read_timeout": &c.ReadTimeout, "write_timeout": &c.WriteTimeout,
	}
	for name, vals := range q {
		v := vals[len(vals)-1]
		switch {
		case durations[name] != nil:
			d, err := parseDuration(v)
			if err != nil {
				return &Error{Part: name, Value: v, Err: ErrInvalid, Detail: "want a duration such as 3s, or seconds"}
			}
			*durations[name] = d
		case name == "pool_size":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return &Error{Part: name, Value: v, Err: ErrInvalid, Detail: "want a number from 1"}
			}
			c.PoolSize = n
		case name == "master_name" && c.Mode == Sentinel:
			c.MasterName = v
		case name == "sentinel_password" && c.Mode == Sentinel:
			c.sentinelPassword = v
		default:
			return &Error{Part: name, Err: ErrUnknownOption, Detail: c.wantOptions()}
		}
	}
	if c.Mode == Sentinel && c.MasterName == "" {
		return &Error{Part: "master_name", Err: ErrMissing, Detail: "redis+sentinel URLs need master_name=NAME"}
	}
	return nil
}

// wantOptions lists the options the Conn's mode accepts.
func (c *Conn) wantOptions() string {
	common := "dial_timeout, read_timeout, write_timeout, pool_size"
	switch c.Mode {
	case Sentinel:
		return "want addr, master_name, db, sentinel_password, " + common
	case Cluster:
		return "want addr, " + common
	}
	return "want db, " + common
}

// parseDuration reads a Go duration, or a whole number of seconds.
func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(v)
}

// HasPassword reports whether the URL carries a password.
func (c *Conn) HasPassword() bool { return c.password != "" }

// tlsConfig returns the TLS settings, or nil without TLS.
func (c *Conn) tlsConfig() *tls.Config {
	if !c.TLS {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Addrs[0])
	if err != nil {
		host = c.Addrs[0]
	}
	if c.Mode != Single {
		// Several hosts: left empty, crypto/tls checks each node against its
		// own host name (tls.DialWithDialer); one name would be wrong.
		host = ""
	}
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

// AsynqOpt returns asynq's connection option for the URL:
// asynq.RedisClientOpt, asynq.RedisFailoverClientOpt or a [ClusterOpt]
// (asynq.RedisClusterClientOpt with llmq's failover tuning).
func (c *Conn) AsynqOpt() asynq.RedisConnOpt {
	switch c.Mode {
	case Sentinel:
		return asynq.RedisFailoverClientOpt{
			MasterName: c.MasterName, SentinelAddrs: c.Addrs, SentinelPassword: c.sentinelPassword,
			Username: c.Username, Password: c.password, DB: c.DB,
			DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
			PoolSize: c.PoolSize, TLSConfig: c.tlsConfig(),
		}
	case Cluster:
		return ClusterOpt{RedisClusterClientOpt: asynq.RedisClusterClientOpt{
			Addrs: c.Addrs, Username: c.Username, Password: c.password,
			DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
			TLSConfig: c.tlsConfig(),
		}, conn: c}
	}
	return asynq.RedisClientOpt{
		Network: c.Network, Addr: c.Addrs[0], Username: c.Username, Password: c.password, DB: c.DB,
		DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
		PoolSize: c.PoolSize, TLSConfig: c.tlsConfig(),
	}
}

// NewClient returns a new go-redis client for the URL: a *redis.Client, a
// failover client (Sentinel) or a *redis.ClusterClient. The caller closes
// it. It does not connect until first used.
//
// A cluster client re-reads the slot map after any failed command and at
// least every [ClusterStateReload]: go-redis alone keeps sending a dead
// master's slots to it for up to a minute after its replica took over.
func (c *Conn) NewClient() redis.UniversalClient {
	switch c.Mode {
	case Sentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: c.MasterName, SentinelAddrs: c.Addrs, SentinelPassword: c.sentinelPassword,
			Username: c.Username, Password: c.password, DB: c.DB,
			DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
			PoolSize: c.PoolSize, TLSConfig: c.tlsConfig(), Protocol: Protocol,
		})
	case Cluster:
		cc := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: c.Addrs, Username: c.Username, Password: c.password,
			DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
			PoolSize: c.PoolSize, TLSConfig: c.tlsConfig(), Protocol: Protocol,
			ClusterStateReloadInterval: ClusterStateReload,
		})
		cc.AddHook(reloadOnError{cc})
		return cc
	}
	return redis.NewClient(&redis.Options{
		Network: c.Network, Addr: c.Addrs[0], Username: c.Username, Password: c.password, DB: c.DB,
		DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
		PoolSize: c.PoolSize, TLSConfig: c.tlsConfig(), Protocol: Protocol,
	})
}

// String describes the connection for people: its mode, nodes and
// database, with any password masked, e.g.
// "sentinel master=mymaster sentinels=10.0.0.1:26379,10.0.0.2:26379 db=0 password=xxxxx".
func (c Conn) String() string {
	var b strings.Builder
	b.WriteString(string(c.Mode))
	if c.TLS {
		b.WriteString(" tls")
	}
	switch c.Mode {
	case Sentinel:
		fmt.Fprintf(&b, " master=%s sentinels=%s db=%d", c.MasterName, strings.Join(c.Addrs, ","), c.DB)
	case Cluster:
		fmt.Fprintf(&b, " nodes=%s", strings.Join(c.Addrs, ","))
	default:
		fmt.Fprintf(&b, " addr=%s db=%d", c.Addrs[0], c.DB)
	}
	if c.Username != "" {
		b.WriteString(" user=" + c.Username)
	}
	if c.password != "" {
		b.WriteString(" password=" + masked)
	}
	if c.sentinelPassword != "" {
		b.WriteString(" sentinel_password=" + masked)
	}
	return b.String()
}

// GoString is String, so %#v masks the password too.
func (c Conn) GoString() string { return c.String() }

// Redacted returns the connection as a URL in canonical form with every
// password replaced by xxxxx: safe for logs, errors and `llmq config`.
func (c *Conn) Redacted() string {
	scheme := "redis"
	if c.TLS {
		scheme = "rediss"
	}
	switch {
	case c.Network == "unix":
		scheme = "unix"
	case c.Mode != Single:
		scheme += "+" + string(c.Mode)
	}
	var b strings.Builder
	b.WriteString(scheme + "://")
	if c.Username != "" || c.password != "" {
		b.WriteString(url.PathEscape(c.Username))
		if c.password != "" {
			b.WriteString(":" + masked)
		}
		b.WriteString("@")
	}
	b.WriteString(c.Addrs[0])
	var q []string
	for _, a := range c.Addrs[1:] {
		q = append(q, "addr="+a)
	}
	switch c.Mode {
	case Single:
		if c.Network == "unix" {
			q = append(q, "db="+strconv.Itoa(c.DB))
		} else {
			b.WriteString("/" + strconv.Itoa(c.DB))
		}
	case Sentinel:
		q = append(q, "master_name="+url.QueryEscape(c.MasterName), "db="+strconv.Itoa(c.DB))
		if c.sentinelPassword != "" {
			q = append(q, "sentinel_password="+masked)
		}
	}
	for _, o := range []struct {
		name string
		d    time.Duration
	}{{"dial_timeout", c.DialTimeout}, {"read_timeout", c.ReadTimeout}, {"write_timeout", c.WriteTimeout}} {
		if o.d != 0 {
			q = append(q, o.name+"="+o.d.String())
		}
	}
	if c.PoolSize != 0 {
		q = append(q, "pool_size="+strconv.Itoa(c.PoolSize))
	}
	if len(q) > 0 {
		b.WriteString("?" + strings.Join(q, "&"))
	}
	return b.String()
}
