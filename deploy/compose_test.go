package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"

	"github.com/llmq/llmq/metrics"
)

// root is the repository root, where docker-compose.yml lives.
const root = ".."

// loadCompose loads docker-compose.yml the way `docker compose` does, with
// the given profiles and environment (for ${VAR} interpolation).
func loadCompose(t *testing.T, env map[string]string, profiles ...string) *types.Project {
	t.Helper()
	wd, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  wd,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(wd, "docker-compose.yml")}},
		Environment: env,
	}, loader.WithProfiles(profiles), func(o *loader.Options) { o.SetProjectName("llmq", true) })
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	return s
}

func TestComposeServices(t *testing.T) {
	p := loadCompose(t, nil)
	want := []string{"asynqmon", "grafana", "prometheus", "redis", "worker"}
	if got := p.ServiceNames(); !slices.Equal(sorted(got), want) {
		t.Fatalf("services without a profile: %v, want %v", got, want)
	}
	demo := loadCompose(t, nil, "demo")
	if got := sorted(demo.ServiceNames()); !slices.Equal(got, sorted(append(want, "fake-upstream", "demo-enqueue"))) {
		t.Fatalf("services with --profile demo: %v", got)
	}
	// Every service that talks to Redis starts after Redis is healthy.
	for _, name := range []string{"worker", "asynqmon", "demo-enqueue"} {
		s := service(t, demo, name)
		if dep, ok := s.DependsOn["redis"]; !ok || dep.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: depends_on redis %+v, want condition service_healthy", name, dep)
		}
	}
	if dep := service(t, demo, "grafana").DependsOn["prometheus"]; dep.Condition != types.ServiceConditionHealthy {
		t.Errorf("grafana: depends_on prometheus %+v, want service_healthy", dep)
	}
	if dep := service(t, demo, "demo-enqueue").DependsOn["fake-upstream"]; dep.Condition != types.ServiceConditionHealthy {
		t.Errorf("demo-enqueue: depends_on fake-upstream %+v, want service_healthy", dep)
	}
	// Every long-running service has a health check that runs a command its
	// image has.
	for name, probe := range map[string]string{
		"redis": "redis-cli", "worker": "/llmq", "asynqmon": "/llmq-asynqmon", "prometheus": "wget",
		"grafana": "wget", "fake-upstream": "/llmq",
	} {
		hc := service(t, demo, name).HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] != "CMD" || hc.Test[1] != probe || hc.Interval == nil || hc.Timeout == nil {
			t.Errorf("%s: health check %+v, want CMD %s with interval and timeout", name, hc, probe)
		}
	}
}

// The Batch API service (profile api): `llmq serve` on every interface of
// its container, published on the host's localhost; tenants' keys from
// Docker secrets that deploy/serve.yaml names, never inline; started after
// a healthy Redis; a health check on its own port; a stop grace period
// above serve's 30 s shutdown; scraped by Prometheus.
func TestComposeServe(t *testing.T) {
	if slices.Contains(loadCompose(t, nil).ServiceNames(), "serve") {
		t.Error("serve runs without --profile api")
	}
	p := loadCompose(t, map[string]string{"LLMQ_SERVE_KEYS": "alice:sk-must-not-appear-0123"}, "api")
	if got, want := sorted(p.ServiceNames()), []string{"asynqmon", "grafana", "prometheus", "redis", "serve", "worker"}; !slices.Equal(got, want) {
		t.Fatalf("services with --profile api: %v, want %v", got, want)
	}
	s := service(t, p, "serve")
	w := service(t, p, "worker")
	if s.Build == nil || s.Build.Target != "llmq" || s.Image != w.Image {
		t.Errorf("serve build %+v image %q: want the worker's llmq image %q", s.Build, s.Image, w.Image)
	}
	i := slices.Index(s.Command, "--addr")
	if len(s.Command) == 0 || s.Command[0] != "serve" || i < 0 || i+1 >= len(s.Command) {
		t.Fatalf("serve command %v, want serve --addr 0.0.0.0:PORT", s.Command)
	}
	host, port, err := net.SplitHostPort(s.Command[i+1])
	if err != nil || host != "0.0.0.0" {
		t.Errorf("serve --addr %q: bind 0.0.0.0 inside the container, or the published port reaches nothing", s.Command[i+1])
	}
	if len(s.Ports) != 1 || s.Ports[0].HostIP != "127.0.0.1" || fmt.Sprint(s.Ports[0].Target) != port || s.Ports[0].Published == "" {
		t.Errorf("serve ports %+v: want one, published on 127.0.0.1, to container port %s", s.Ports, port)
	}
	if dep, ok := s.DependsOn["redis"]; !ok || dep.Condition != types.ServiceConditionHealthy {
		t.Errorf("serve: depends_on redis %+v, want condition service_healthy", dep)
	}
	hc := s.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] != "CMD" || hc.Test[1] != "/llmq" || !slices.Contains(hc.Test, "127.0.0.1:"+port) || hc.Interval == nil || hc.Timeout == nil {
		t.Errorf("serve: health check %+v, want CMD /llmq probing 127.0.0.1:%s", hc, port)
	}
	if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) <= 30*time.Second {
		t.Errorf("serve stop_grace_period %v: must exceed serve's 30 s shutdown", s.StopGracePeriod)
	}
	if env(s, "LLMQ_REDIS_URL") != "redis://redis:6379/0" {
		t.Errorf("serve LLMQ_REDIS_URL %q", env(s, "LLMQ_REDIS_URL"))
	}

	// Client keys: serve.clients of the mounted deploy/serve.yaml, each a
	// Docker secret of serve's; no key in the environment; the provider
	// key is not serve's at all.
	if env(s, "LLMQ_CONFIG") != "/etc/llmq/serve.yaml" || !hasVolume(s, types.VolumeTypeBind, "deploy/serve.yaml", "/etc/llmq/serve.yaml") {
		t.Errorf("serve: LLMQ_CONFIG %q, volumes %+v: want deploy/serve.yaml at /etc/llmq/serve.yaml", env(s, "LLMQ_CONFIG"), s.Volumes)
	}
	for _, k := range []string{"LLMQ_SERVE_KEYS", "OPENAI_API_KEY", "LLMQ_API_KEY_FILE"} {
		if _, ok := s.Environment[k]; ok {
			t.Errorf("serve: environment sets %s", k)
		}
	}
	for _, svc := range p.Services {
		for k, v := range svc.Environment {
			if v != nil && strings.Contains(*v, "sk-must-not-appear") {
				t.Errorf("%s: environment %s carries a client key", svc.Name, k)
			}
		}
	}
	mounted := map[string]string{} // path in the container -> secret
	for _, sec := range s.Secrets {
		target := sec.Target
		if target == "" {
			target = sec.Source
		}
		if !strings.HasPrefix(target, "/") {
			target = "/run/secrets/" + target
		}
		mounted[target] = sec.Source
		if sec.Source == "openai_api_key" {
			t.Error("serve mounts the provider key (openai_api_key)")
		}
	}
	var cfg struct {
		Serve struct {
			Clients []struct {
				Name    string `yaml:"name"`
				KeyFile string `yaml:"key_file"`
			} `yaml:"clients"`
		} `yaml:"serve"`
	}
	readYAML(t, "serve.yaml", &cfg)
	if len(cfg.Serve.Clients) == 0 {
		t.Fatal("deploy/serve.yaml names no client")
	}
	for _, c := range cfg.Serve.Clients {
		src, ok := mounted[c.KeyFile]
		if !ok {
			t.Errorf("client %q: key_file %s is not a secret serve mounts (%v)", c.Name, c.KeyFile, mounted)
			continue
		}
		if sec, ok := p.Secrets[src]; !ok || sec.File == "" {
			t.Errorf("client %q: secret %s is not declared with a file", c.Name, src)
		}
		// Workers read the tenant names (one queue each), never the keys.
		for _, ws := range w.Secrets {
			if ws.Source == src {
				t.Errorf("worker mounts client %q's key (secret %s)", c.Name, src)
			}
		}
	}
	if env(w, "LLMQ_CONFIG") != "/etc/llmq/serve.yaml" || !hasVolume(w, types.VolumeTypeBind, "deploy/serve.yaml", "/etc/llmq/serve.yaml") {
		t.Errorf("worker: LLMQ_CONFIG %q: workers need deploy/serve.yaml's tenant names to serve their queues", env(w, "LLMQ_CONFIG"))
	}

	var prom struct {
		ScrapeConfigs []struct {
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "prometheus/prometheus.yml", &prom)
	scraped := false
	for _, sc := range prom.ScrapeConfigs {
		for _, d := range sc.DNSSDConfigs {
			scraped = scraped || (slices.Contains(d.Names, "serve") && fmt.Sprint(d.Port) == port)
		}
	}
	if !scraped {
		t.Errorf("prometheus.yml does not scrape serve's /metrics (DNS name serve, port %s)", port)
	}
}

func TestComposeRedisPersistence(t *testing.T) {
	r := service(t, loadCompose(t, nil), "redis")
	cmd := strings.Join(r.Command, " ")
	for _, arg := range []string{"--appendonly yes", "--appendfsync everysec"} {
		if !strings.Contains(cmd, arg) {
			t.Errorf("redis command %q lacks %q", cmd, arg)
		}
	}
	if !hasVolume(r, types.VolumeTypeVolume, "redis-data", "/data") {
		t.Errorf("redis: /data is not the named volume redis-data: %+v", r.Volumes)
	}
	for _, port := range r.Ports {
		if port.HostIP != "127.0.0.1" {
			t.Errorf("redis published on %q: bind it to 127.0.0.1 only", port.HostIP)
		}
	}
}

func TestComposeWorkerScalesAndKeepsSecretsOut(t *testing.T) {
	p := loadCompose(t, map[string]string{"OPENAI_API_KEY": "sk-must-not-appear"})
	w := service(t, p, "worker")
	if w.ContainerName != "" {
		t.Errorf("worker has container_name %q: --scale worker=N would fail", w.ContainerName)
	}
	if len(w.Ports) != 0 {
		t.Errorf("worker publishes host ports %+v: --scale worker=N would collide", w.Ports)
	}
	if w.Build == nil || w.Build.Target != "llmq" || w.Image == "" {
		t.Errorf("worker build %+v image %q: want the Dockerfile's llmq target", w.Build, w.Image)
	}
	if !slices.Equal(w.Command, types.ShellCommand{"worker"}) {
		t.Errorf("worker command %v", w.Command)
	}
	if !slices.Contains(w.Expose, "9464") || env(w, "LLMQ_METRICS_ADDR") != ":9464" {
		t.Errorf("worker: expose %v, LLMQ_METRICS_ADDR %q: want /metrics on 9464", w.Expose, env(w, "LLMQ_METRICS_ADDR"))
	}
	if env(w, "LLMQ_API_KEY_FILE") != "/run/secrets/openai_api_key" || len(w.Secrets) != 1 || w.Secrets[0].Source != "openai_api_key" {
		t.Errorf("worker: key file %q, secrets %+v: want the openai_api_key Docker secret", env(w, "LLMQ_API_KEY_FILE"), w.Secrets)
	}
	if _, ok := p.Secrets["openai_api_key"]; !ok {
		t.Error("secret openai_api_key is not declared")
	}
	if env(w, "LLMQ_REDIS_URL") != "redis://redis:6379/0" {
		t.Errorf("worker LLMQ_REDIS_URL %q", env(w, "LLMQ_REDIS_URL"))
	}
	if w.StopGracePeriod == nil || time.Duration(*w.StopGracePeriod) <= 30*time.Second {
		t.Errorf("worker stop_grace_period %v: must exceed the 30 s shutdown timeout", w.StopGracePeriod)
	}
	for _, s := range p.Services {
		for k, v := range s.Environment {
			if v != nil && (strings.HasPrefix(*v, "sk-") || k == "OPENAI_API_KEY") {
				t.Errorf("%s: environment %s carries a key; keys come from the secret file", s.Name, k)
			}
		}
	}
}

func TestComposeVolumesAndMounts(t *testing.T) {
	p := loadCompose(t, nil, "demo")
	for _, v := range []string{"redis-data", "prometheus-data", "grafana-data"} {
		if _, ok := p.Volumes[v]; !ok {
			t.Errorf("named volume %s is not declared", v)
		}
	}
	// Every bind mount's source is in the repository.
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s: bind mount source %s: %v", s.Name, v.Source, err)
			}
			if !v.ReadOnly {
				t.Errorf("%s: bind mount %s is writable; mount configuration read-only", s.Name, v.Target)
			}
		}
	}
	pr := service(t, p, "prometheus")
	if !hasVolume(pr, types.VolumeTypeBind, "deploy/prometheus", "/etc/prometheus") || !hasVolume(pr, types.VolumeTypeVolume, "prometheus-data", "/prometheus") {
		t.Errorf("prometheus volumes %+v", pr.Volumes)
	}
	if !slices.Contains(pr.Command, "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus command %v", pr.Command)
	}
	g := service(t, p, "grafana")
	if !hasVolume(g, types.VolumeTypeBind, "deploy/grafana/provisioning", "/etc/grafana/provisioning") ||
		!hasVolume(g, types.VolumeTypeBind, "deploy/grafana/dashboards", "/var/lib/grafana/dashboards") {
		t.Errorf("grafana volumes %+v", g.Volumes)
	}
	if !hasVolume(service(t, p, "demo-enqueue"), types.VolumeTypeBind, "demo/prompts.jsonl", "/demo/prompts.jsonl") {
		t.Error("demo-enqueue does not mount demo/prompts.jsonl")
	}
}

func TestComposeDemoProfile(t *testing.T) {
	p := loadCompose(t, map[string]string{"OPENAI_BASE_URL": "http://fake-upstream:8089/v1"}, "demo")
	f := service(t, p, "fake-upstream")
	if cmd := strings.Join(f.Command, " "); !strings.HasPrefix(cmd, "fake-upstream --addr 0.0.0.0:8089") {
		t.Errorf("fake-upstream command %q", cmd)
	}
	e := service(t, p, "demo-enqueue")
	if cmd := strings.Join(e.Command, " "); cmd != "enqueue /demo/prompts.jsonl --batch demo --wait" {
		t.Errorf("demo-enqueue command %q", cmd)
	}
	if e.Restart != "no" {
		t.Errorf("demo-enqueue restart %q: a one-shot must not restart", e.Restart)
	}
	if got := env(service(t, p, "worker"), "OPENAI_BASE_URL"); got != "http://fake-upstream:8089/v1" {
		t.Errorf("worker OPENAI_BASE_URL %q under the demo env", got)
	}
	// deploy/demo.env points the fleet at the fake, with a fake key file.
	b, err := os.ReadFile("demo.env")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"OPENAI_BASE_URL=http://fake-upstream:8089/v1", "OPENAI_API_KEY_FILE=./demo/fake-api-key"} {
		if !strings.Contains(string(b), line) {
			t.Errorf("demo.env lacks %s", line)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "demo", "fake-api-key")); err != nil {
		t.Errorf("demo key file: %v", err)
	}
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{
		"CGO_ENABLED=0", "AS llmq", "AS asynqmon", "gcr.io/distroless/static", "USER nonroot",
		"./cmd/llmq", "go -C deploy build", "./asynqmon", "COPY deploy/go.mod", "-X main.version=", "ENTRYPOINT [\"/llmq\"]",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The final stage (the default target) is the small llmq image.
	stages := regexp.MustCompile(`(?m)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?`).FindAllStringSubmatch(df, -1)
	if last := stages[len(stages)-1]; last[2] != "llmq" || !strings.Contains(last[1], "distroless/static") {
		t.Errorf("last stage %v: want the distroless llmq stage", last)
	}
	// No key is baked in: no ENV/ARG of a key or secret, no key literal.
	if regexp.MustCompile(`(?im)^\s*(ENV|ARG)\s+\S*(API_KEY|SECRET|TOKEN|PASSWORD)`).MatchString(df) || regexp.MustCompile(`\bsk-[A-Za-z0-9]`).MatchString(df) {
		t.Error("Dockerfile sets an API key or secret")
	}
	di, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"secrets/", ".git", "bin/"} {
		if !strings.Contains(string(di), want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
}

// The Prometheus configuration scrapes every worker replica and loads the
// alert rules; Grafana's provisioning points at that Prometheus and the
// dashboard.
func TestPrometheusAndGrafanaProvisioning(t *testing.T) {
	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName      string `yaml:"job_name"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "prometheus/prometheus.yml", &prom)
	if !slices.Contains(prom.RuleFiles, "alerts.yml") {
		t.Errorf("prometheus.yml rule_files %v", prom.RuleFiles)
	}
	found := false
	for _, sc := range prom.ScrapeConfigs {
		if sc.JobName == "llmq-worker" && len(sc.DNSSDConfigs) == 1 && slices.Contains(sc.DNSSDConfigs[0].Names, "worker") && sc.DNSSDConfigs[0].Port == 9464 {
			found = true
		}
	}
	if !found {
		t.Error("prometheus.yml does not scrape every worker replica (job llmq-worker, DNS name worker, port 9464)")
	}
	var ds struct {
		Datasources []struct{ UID, Type, URL string } `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].URL != "http://prometheus:9090" || ds.Datasources[0].UID != "prometheus" {
		t.Errorf("grafana datasource %+v", ds.Datasources)
	}
	var prov struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/llmq.yml", &prov)
	if len(prov.Providers) != 1 || prov.Providers[0].Options.Path != "/var/lib/grafana/dashboards" {
		t.Errorf("grafana dashboard provider %+v", prov.Providers)
	}
}

// The dashboard has the panels operators need, and every metric that the
// dashboard and the alert rules query is one llmq exports.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/dashboards/llmq.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var titles, exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		titles = append(titles, p.Title)
		if p.Datasource.UID != "prometheus" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %q, %d queries", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.ToLower(strings.Join(titles, "\n"))
	for _, topic := range []string{"jobs per second", "errors per second by class", "p50 / p95 / p99", "tokens per minute vs budget", "queue depth", "breaker state"} {
		if !strings.Contains(all, topic) {
			t.Errorf("dashboard has no %q panel", topic)
		}
	}
	rules, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	exported := exportedNames(t)
	names := regexp.MustCompile(`\b(?:llmq|asynq)_[a-z_]+`)
	for _, src := range append(exprs, string(rules)) {
		for _, n := range names.FindAllString(src, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
			if !exported[base] {
				t.Errorf("%s is queried but llmq exports no such metric", n)
			}
		}
	}
}

// The promtool unit tests of the alert rules, when promtool is installed
// (scripts/promtool-test.sh installs it and runs the same tests in CI).
func TestAlertRulesWithPromtool(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Skip("promtool not on PATH: run scripts/promtool-test.sh")
	}
	out, err := exec.Command("promtool", "test", "rules", "prometheus/alerts_test.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	out, err = exec.Command("promtool", "check", "config", "prometheus/prometheus.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
}

// exportedNames returns the metric names a worker exports, from a Metrics
// whose every series has been touched, plus the scrape-time collectors'.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New(metrics.Config{})
	m.UpstreamCall("m", 200, "ok", "ok", time.Second)
	m.Tokens("m", metrics.TokensPrompt, 1)
	m.BudgetWait("m", time.Second)
	m.RateLimited("m")
	m.HoldPlaced("a", "auth")
	m.BreakerTransition("m", "closed", "open")
	m.DeadLetter("x")
	m.CacheHit("m")
	m.Job(metrics.JobRetry)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		out[mf.GetName()] = true
	}
	// Scrape-time collectors (they need Redis; metrics' own tests cover them).
	for _, n := range []string{"llmq_budget_tokens_per_minute", "llmq_budget_requests_per_minute", "llmq_budget_tokens_capacity", "llmq_budget_tokens_available",
		"llmq_budget_utilization_ratio", "llmq_budget_cooldown_seconds", "asynq_queue_tasks", "asynq_queue_size",
		"asynq_queue_latency_seconds", "asynq_queue_memory_usage_approx_bytes", "asynq_queue_paused",
		"asynq_tasks_processed_total", "asynq_tasks_failed_total"} {
		out[n] = true
	}
	return out
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func hasVolume(s types.ServiceConfig, typ, source, target string) bool {
	for _, v := range s.Volumes {
		if v.Type == typ && v.Target == target && (v.Source == source || strings.HasSuffix(v.Source, "/"+source)) {
			return true
		}
	}
	return false
}

func env(s types.ServiceConfig, k string) string {
	if v := s.Environment[k]; v != nil {
		return *v
	}
	return ""
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
