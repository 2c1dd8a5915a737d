package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every alert has a runbook entry in README.md, and its runbook annotation
// points at it.
func TestEveryAlertHasARunbook(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "prometheus/alerts.yml", &rules)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !strings.Contains(string(readme), "#### Alert: "+r.Alert+"\n") {
				t.Errorf("README.md has no runbook heading \"#### Alert: %s\"", r.Alert)
			}
			if want := "README.md#alert-" + strings.ToLower(r.Alert); r.Annotations["runbook"] != want {
				t.Errorf("%s: runbook annotation %q, want %q", r.Alert, r.Annotations["runbook"], want)
			}
			if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
				t.Errorf("%s: severity %q", r.Alert, r.Labels["severity"])
			}
			if c := strings.Count(string(tests), "alertname: "+r.Alert+"\n"); c < 2 {
				t.Errorf("%s: %d promtool cases in alerts_test.yml, want one that fires and one that does not", r.Alert, c)
			}
		}
	}
	if n < 8 {
		t.Errorf("%d alerts, want at least 8", n)
	}
}
