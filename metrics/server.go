package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// HealthTimeout bounds the health check behind /healthz.
const HealthTimeout = time.Second

// Disabled reports whether addr turns the metrics server off: "off" or "".
// ":0" is not off: it serves on a free port (Server.Addr tells which).
func Disabled(addr string) bool {
	a := strings.TrimSpace(addr)
	return a == "" || strings.EqualFold(a, "off")
}

// HealthFunc checks a dependency (for a worker: Redis answers PING). It
// gets a context bounded by HealthTimeout.
type HealthFunc func(ctx context.Context) error

// Server serves /metrics and /healthz on one address.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// ListenOption changes what a Server serves.
type ListenOption func(*http.ServeMux)

// WithPprof adds Go's profiles (net/http/pprof) under /debug/pprof/. They
// reveal the process's memory and cost CPU while taken: serve them only
// when asked for (worker.pprof).
func WithPprof() ListenOption {
	return func(mux *http.ServeMux) {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
}

// Listen binds addr and returns a Server ready to Serve: /metrics serves m,
// /healthz answers 200 "ok" while health returns nil within HealthTimeout
// and 503 with the error otherwise. A nil health is always healthy.
func Listen(addr string, m *Metrics, health HealthFunc, opts ...ListenOption) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.Handle("/healthz", HealthHandler(health))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "llmq worker: /metrics (Prometheus), /healthz (200 while Redis answers)\n")
	})
	for _, o := range opts {
		o(mux)
	}
	return &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

// Addr returns the bound address, e.g. "[::]:9464" or "127.0.0.1:41233".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx ends, then shuts down within a few seconds. It
// returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(s.ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("metrics: serve on %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close()
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", s.Addr(), err)
	}
	return nil
}

// HealthHandler answers 200 "ok" while health returns nil within
// HealthTimeout, else 503 with the error text.
func HealthHandler(health HealthFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if health != nil {
			ctx, cancel := context.WithTimeout(r.Context(), HealthTimeout)
			defer cancel()
			if err := health(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = fmt.Fprintf(w, "unhealthy: %v\n", err)
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
}

// Probe asks the /healthz of the metrics server at addr (as configured, e.g.
// ":9464": an empty host means this machine) and returns nil on 200. It is
// the container health check: `llmq worker --probe`.
func Probe(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics: probe: address %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(host, port) + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("metrics: probe %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("metrics: probe %s: %w (is the worker running with its metrics server on?)", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("metrics: probe %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
