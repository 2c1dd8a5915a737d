package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/llmq/llmq/batchapi"
	"github.com/llmq/llmq/producer"
)

// serveKeysEnv names the environment variable holding client keys.
const serveKeysEnv = "LLMQ_SERVE_KEYS"

// serveShutdownTimeout bounds the wait for requests in flight at SIGTERM.
const serveShutdownTimeout = 30 * time.Second

func (a *app) serveCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "serve [--addr HOST:PORT]",
		Short: "Serve the OpenAI-compatible Batch API (/v1/files, /v1/batches) for the official SDKs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("addr") {
				a.cfg.Serve.Addr = addr
			}
			return a.runServe(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "", "listen address (default from config: serve.addr, LLMQ_SERVE_ADDR, "+"127.0.0.1:8080)")
	return cmd
}

// serveClients reads the client keys: serve.clients key files, then
// LLMQ_SERVE_KEYS.
func (a *app) serveClients() ([]batchapi.Client, error) {
	var out []batchapi.Client
	for _, c := range a.cfg.Serve.Clients {
		cl, err := batchapi.ReadKeyFile(c.Name, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("serve.clients: %w", err)
		}
		out = append(out, cl)
	}
	env, err := batchapi.ParseKeys(os.Getenv(serveKeysEnv))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", serveKeysEnv, err)
	}
	return append(out, env...), nil
}

// serveTenants returns the names of the configured clients, without
// reading any key: workers serve one queue per tenant.
func (a *app) serveTenants() []string {
	var names []string
	for _, c := range a.cfg.Serve.Clients {
		names = append(names, c.Name)
	}
	if env, err := batchapi.ParseKeys(os.Getenv(serveKeysEnv)); err == nil {
		for _, c := range env {
			names = append(names, c.Name)
		}
	}
	return names
}

func (a *app) runServe(ctx context.Context) error {
	clients, err := a.serveClients()
	if err != nil {
		return err
	}
	if len(clients) == 0 {
		return fmt.Errorf("serve: %w: set %s=name:key,... or serve.clients [{name, key_file}] in the LLMQ_CONFIG file", batchapi.ErrNoClients, serveKeysEnv)
	}
	rdb, opt, err := a.redisClient(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	svc, err := batchapi.New(batchapi.Config{
		Redis: rdb, RedisOpt: opt, Prefix: a.cfg.Prefix, Queue: a.cfg.Queue, Clients: clients,
		MaxFileBytes: a.cfg.Serve.MaxFileBytes, MaxRequests: a.cfg.Serve.MaxRequests,
		CompletionWindow: a.cfg.Serve.CompletionWindow, FileTTL: a.cfg.Serve.FileTTL, Tick: a.cfg.Serve.Tick,
		Attempts: a.cfg.Retry.Attempts, ResultTTL: a.cfg.Results.TTL, Retention: a.cfg.Results.Retention,
		Producer: []producer.Option{producer.WithCallTimeout(a.cfg.Upstream.CallTimeout), producer.WithFallbackTiers(a.cfg.FallbackTiers())},
		Log:      a.log,
	})
	if err != nil {
		if errors.Is(err, batchapi.ErrBadClients) {
			return fmt.Errorf("serve: %w (check %s and serve.clients)", err, serveKeysEnv)
		}
		return err
	}
	defer svc.Close()
	ln, err := net.Listen("tcp", a.cfg.Serve.Addr)
	if err != nil {
		return fmt.Errorf("serve: listen on %s (serve.addr, LLMQ_SERVE_ADDR, --addr): %w", a.cfg.Serve.Addr, err)
	}
	srv := &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 10 * time.Second}
	names := make([]string, len(clients))
	for i, c := range clients {
		names[i] = c.Name
	}
	a.log.Info().Str("addr", ln.Addr().String()).Strs("tenants", names).Msg("serving the Batch API at http://" + ln.Addr().String() + "/v1")
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	loopDone := make(chan struct{})
	go func() { defer close(loopDone); _ = svc.Run(runCtx) }()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		cancel()
		<-loopDone
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), serveShutdownTimeout)
	defer scancel()
	err = srv.Shutdown(sctx)
	cancel()
	<-loopDone
	return err
}
