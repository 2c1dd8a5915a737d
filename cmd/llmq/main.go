// Command llmq runs LLM chat-completion jobs at scale: `llmq worker` drains
// the queue, `llmq enqueue` submits JSONL batches, `llmq results` exports
// them, `llmq dlq` inspects dead letters, `llmq fake-upstream` plays the
// OpenAI API for tests and demos, and `llmq config` prints the effective
// configuration.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/llmq/llmq/config"
	"github.com/llmq/llmq/redisconn"
)

// Set at link time by the Makefile (-ldflags "-X main.version=... -X main.build=...").
var (
	version = "dev"
	build   = "unknown"
)

// exitError carries a process exit code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// exitSignalBase plus a signal's number is the exit code of a second
// interrupt, as shells report a process a signal ended.
const exitSignalBase = 128

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The first SIGINT/SIGTERM cancels ctx: every command winds down (the
	// worker drains within worker.shutdown_timeout). A second one stops the
	// process at once, as most Go servers do.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		s := <-sigs
		fmt.Fprintf(os.Stderr, "llmq: second %v: stopping now\n", s)
		code := 1
		if n, ok := s.(syscall.Signal); ok {
			code = exitSignalBase + int(n)
		}
		os.Exit(code)
	}()
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "llmq:", ee.msg)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "llmq:", err)
	os.Exit(1)
}

// app is what every subcommand shares: configuration and logging.
type app struct {
	cfg    config.Config
	log    zerolog.Logger
	stdout io.Writer
	stderr io.Writer
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "llmq",
		Short:         "Run LLM chat-completion jobs at scale on Redis",
		Version:       version + " (build " + build + ")",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(os.Getenv)
			if err != nil {
				return err
			}
			a.cfg = cfg
			a.log = newLogger(stderr, cfg.Log)
			if !needsRedis(cmd) {
				return nil
			}
			// go-redis logs dial failures on its own; until Redis has
			// answered, one clear error says it all.
			redis.SetLogger(silentLogger{})
			if err := a.checkRedis(cmd.Context()); err != nil {
				return err
			}
			// From here on, route its reconnect warnings through the
			// process logger so every line stays JSON.
			redis.SetLogger(redisLogger{a.log})
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(a.workerCmd(), a.enqueueCmd(), a.resultsCmd(), a.fakeUpstreamCmd(), a.configCmd(),
		a.dlqCmd(), a.resumeCmd(), a.statusCmd(), a.serveCmd())
	return root
}

// newLogger returns the process logger: JSON, or a console view when
// stderr is a terminal; every event carries its time (logTimeFormat),
// version, build and environment.
func newLogger(w io.Writer, c config.Log) zerolog.Logger {
	level, err := zerolog.ParseLevel(strings.ToLower(c.Level))
	if err != nil || c.Level == "" {
		level = zerolog.InfoLevel
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(w).Level(level).Hook(msTime{}).With().
		Str("version", version).Str("build", build).Str("env", c.Environment).Logger()
}

// logTimeFormat is the events' time: RFC 3339 in UTC to the millisecond,
// so a post-mortem can order the upstream calls and breaker transitions of
// one second (zerolog's Timestamp writes whole seconds unless its
// package-level format is changed).
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// msTime stamps each event with its time (logTimeFormat).
type msTime struct{}

// Run adds the time field.
func (msTime) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	var buf [len(logTimeFormat)]byte // "Z07:00" prints as "Z": room to spare, no allocation
	e.Bytes(zerolog.TimestampFieldName, time.Now().UTC().AppendFormat(buf[:0], logTimeFormat))
}

// redisLogger adapts zerolog to go-redis's logger.
type redisLogger struct{ l zerolog.Logger }

// Printf logs one go-redis message as a warning.
func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	r.l.Warn().Str("component", "redis").Msg(fmt.Sprintf(format, v...))
}

// noRedisAnnotation marks a command that runs without Redis.
const noRedisAnnotation = "llmq/no-redis"

// redisCheckTimeout bounds the PING every command that needs Redis sends
// before it starts.
const redisCheckTimeout = 3 * time.Second

// needsRedis reports whether cmd talks to Redis: every command but those
// annotated otherwise (config, fake-upstream, help) and `worker --probe`.
func needsRedis(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c.Annotations[noRedisAnnotation] != "" {
			return false
		}
	}
	if cmd.Name() == "help" || cmd.Name() == "completion" || cmd.Parent() != nil && cmd.Parent().Name() == "completion" {
		return false
	}
	if f := cmd.Flags().Lookup("probe"); f != nil && f.Value.String() == "true" {
		return false
	}
	return true
}

// noRedis is the annotation of a command that runs without Redis.
func noRedis() map[string]string { return map[string]string{noRedisAnnotation: "true"} }

// errRedisDown is matched by the error of a command whose Redis does not
// answer.
var errRedisDown = errors.New("does not answer")

// checkRedis PINGs the configured Redis once and returns one clear error
// when it does not answer or refuses the connection.
func (a *app) checkRedis(ctx context.Context) error {
	c, err := a.redisConn()
	if err != nil {
		return err
	}
	rdb := c.NewClient()
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
	defer cancel()
	err = rdb.Ping(pctx).Err()
	var rerr redis.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &rerr):
		// Redis answered, with an error (a wrong password, a protected
		// mode): its message names the problem and holds no secret.
		return fmt.Errorf("Redis at %s refused the connection: %v (LLMQ_REDIS_URL)", c.Redacted(), rerr)
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("Redis at %s %w (LLMQ_REDIS_URL)", c.Redacted(), errRedisDown)
}

// silentLogger drops go-redis's own log lines.
type silentLogger struct{}

// Printf drops the message.
func (silentLogger) Printf(context.Context, string, ...any) {}

// redisConn parses the configured Redis URL.
func (a *app) redisConn() (*redisconn.Conn, error) {
	c, err := redisconn.Parse(a.cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w (LLMQ_REDIS_URL)", err)
	}
	return c, nil
}

// redisOpt is asynq's connection to the configured Redis.
func (a *app) redisOpt() (asynq.RedisConnOpt, error) {
	c, err := a.redisConn()
	if err != nil {
		return nil, err
	}
	return c.AsynqOpt(), nil
}

// redisClient connects to the configured Redis and checks it answers.
func (a *app) redisClient(ctx context.Context) (redis.UniversalClient, asynq.RedisConnOpt, error) {
	c, err := a.redisConn()
	if err != nil {
		return nil, nil, err
	}
	rdb := c.NewClient()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("redis at %s does not answer: %w (check LLMQ_REDIS_URL)", c.Redacted(), err)
	}
	return rdb, c.AsynqOpt(), nil
}

func (a *app) configCmd() *cobra.Command {
	return &cobra.Command{
		Use:         "config",
		Annotations: noRedis(),
		Short:       "Print the effective configuration (defaults, LLMQ_CONFIG file, environment), secrets masked",
		Args:        cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.cfg.Print(a.stdout)
		},
	}
}
