package config

import (
	"strings"
	"testing"
	"time"
)

func TestTierSettings(t *testing.T) {
	c := Default()
	if c.Cache.TTL != 24*time.Hour || c.StaticResponse.Text != "" || c.Breaker.PerProcess || len(c.Fallbacks) != 0 {
		t.Fatalf("defaults: cache %+v static %+v breaker %+v fallbacks %v", c.Cache, c.StaticResponse, c.Breaker, c.Fallbacks)
	}
	c = loadYAML(t, "breaker: {failures: 3, window: 6s, open: 3s, per_process: true}\nfallbacks:\n  gpt-4o: [gpt-4o-mini, gpt-4.1-mini]\ncache: {ttl: 2h}\nstatic_response: {text: busy, all_jobs: true}\n")
	if c.Breaker != (Breaker{Failures: 3, FailureRate: 50, MinCalls: 20, Window: 6 * time.Second, Open: 3 * time.Second, PerProcess: true}) ||
		strings.Join(c.Fallbacks["gpt-4o"], ",") != "gpt-4o-mini,gpt-4.1-mini" || c.Cache.TTL != 2*time.Hour ||
		c.StaticResponse != (StaticResponse{Text: "busy", AllJobs: true}) {
		t.Fatalf("loaded %+v %v %+v %+v", c.Breaker, c.Fallbacks, c.Cache, c.StaticResponse)
	}
	c.Fallbacks["gpt-4o"] = []string{"gpt-4o"}
	c.Cache.TTL = 0
	err := c.Validate()
	for _, want := range []string{"fallbacks.gpt-4o[0]", "cache.ttl"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to name %s", err, want)
		}
	}
}
