# llmq — see README.md.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BUILD   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.build=$(BUILD)
BIN     := bin/llmq

.PHONY: build demo test lint bench bench-enqueue bench-e2e bench-budget redis fuzz clean

build:
	go build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/llmq

## demo: a 200-prompt batch through a local worker against the fake upstream
demo: build redis
	bash scripts/demo.sh

## test: every test, race detector on, against the real Redis
test: redis
	go vet ./...
	@test -z "$$(gofmt -l .)" || (echo "gofmt would change:"; gofmt -l .; exit 1)
	go test -race -count=1 -timeout 12m ./...

lint:
	go vet ./...
	@test -z "$$(gofmt -l .)" || (echo "gofmt would change:"; gofmt -l .; exit 1)

## redis: start a throwaway Redis on 127.0.0.1:6379 unless one answers
redis:
	@bash scripts/ensure-redis.sh

bench: bench-enqueue bench-e2e

## bench-enqueue: producer batch enqueue rate (jobs/s)
bench-enqueue: redis
	go test -run '^$$' -bench BenchmarkEnqueueBatch -benchtime 3x ./producer/

## bench-e2e: enqueue and drain through worker processes against an instant fake upstream
bench-e2e: build redis
	go test -run '^$$' -bench BenchmarkEndToEnd -benchtime 1x -timeout 10m ./worker/

## fuzz: run each fuzzer briefly
fuzz:
	bash scripts/fuzz.sh 10s

clean:
	rm -rf bin demo/out
