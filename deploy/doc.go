// Package deploy holds what runs llmq in production beside the binary: the
// docker compose file's checks (compose_test.go loads ../docker-compose.yml
// with compose-spec/compose-go and checks every service, dependency,
// health check and volume), the Prometheus configuration and alert rules
// (prometheus/, unit-tested with promtool), the Grafana dashboard and its
// provisioning (grafana/), and an asynqmon build that shows llmq jobs
// readably (asynqmon/). The runbook is README.md, "Operations".
//
// deploy is a Go module of its own (github.com/llmq/llmq/deploy, built
// against the llmq beside it by a replace directive), so a service that
// imports llmq's producer inherits none of compose-go or asynqmon. Its
// tests run from here: cd deploy && go test ./... (make test does).
package deploy
