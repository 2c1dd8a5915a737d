// Package metrics is llmq's Prometheus instrumentation: the counters,
// histograms and gauges a worker updates along a job's path (upstream calls
// by model, status class, failure class and outcome; latency; tokens; budget
// waits; 429s; holds; breaker state; job outcomes; cache hits), scrape-time
// collectors for the asynq queues and the fleet-wide budget, and the small
// HTTP server that exposes /metrics and /healthz beside a worker.
//
// Every metric lives in a prometheus.Registry the Metrics value owns; nothing
// is registered with the global default registry. Every method is safe on a
// nil *Metrics, so code on the job's path calls it unconditionally and a
// worker without metrics pays nothing.
//
// Label values are never free text: models, classes and accounts pass
// through Label, which keeps short identifier-like values and maps anything
// else (a prompt pasted into a model field, a key) to "other". Prompts and
// API keys never become label values.
package metrics
