# llmq — see README.md.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BUILD   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.build=$(BUILD)
BIN     := bin/llmq

.PHONY: build demo test test-redis-ha lint bench bench-enqueue bench-e2e bench-budget bench-outage bench-overhead bench-redis bench-batchapi redis fuzz drill clean

build:
	go build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/llmq

## demo: a 200-prompt batch through a local worker against the fake upstream
demo: build redis
	bash scripts/demo.sh

## test: every test of both modules (the library, and deploy/'s tooling), race
## detector on, against the real Redis
test: redis
	go vet ./...
	cd deploy && go vet ./...
	@test -z "$$(gofmt -l .)" || (echo "gofmt would change:"; gofmt -l .; exit 1)
	go test -race -count=1 -timeout 12m ./...
	cd deploy && go test -race -count=1 -timeout 5m ./...

# llmq's Redis-touching tests against real topologies started from redis-server:
# a 3-master + 3-replica cluster, then a Sentinel set (see cmd/redistopo).
REDIS_HA_PKGS = ./ratelimit ./breaker ./hold ./results ./cache ./producer ./metrics ./worker
test-redis-ha:
	go run ./cmd/redistopo cluster -- go test -count=1 $(REDIS_HA_PKGS)
	go run ./cmd/redistopo sentinel -- go test -count=1 ./producer ./results ./hold

lint:
	go vet ./...
	cd deploy && go vet ./...
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

## bench-budget: drain a batch through 1 and 4 `llmq worker` processes sharing one
## budget against a fake upstream enforcing the same RPM/TPM; baselines: per-process
## x/time/rate limiters with the budget split, and not split (about ten minutes)
bench-budget: build redis
	go run ./bench/budget -bin $(BIN)

## bench-batchapi: llmq serve with the official Go SDK: serve's peak RSS during a 200 MB upload,
## a 10,000-request batch at 30,000 RPM against the bound N/RPM, two tenants' fair share; then
## serve's peak RSS while uploading and creating a batch of 50,000 requests (~196 MiB) and its time;
## then removing a cancelled batch's queued jobs (µs/job, 1,000 to 50,000) and a cancel sent while
## 50,000 requests are being enqueued (time to cancelled); then removing 1,000 queued jobs at the
## head, middle and tail of 300,000 pending (ms per chunk)
bench-batchapi: redis
	LLMQ_BENCH_BATCHAPI=1 go test -count=1 -run '^TestBenchBatchAPI(Create)?$$' -v -timeout 30m ./cmd/llmq/
	go test -run '^$$' -bench 'BenchmarkRemoveQueued|BenchmarkCancelDuringEnqueue' -benchtime 1x -timeout 30m ./batchapi/
	go test -run '^$$' -bench 'BenchmarkRemoveQueuedBacklog' -benchtime 5x ./producer/

## bench-outage: the outage drill alone: 4 `llmq worker` processes, a steady stream, the
## fake answers 503 for 10 s then recovers; shared breaker vs per-process breakers (about 45 s)
bench-outage: build redis
	go run ./drill/cmd/drill -bin $(BIN) -size long -run '^outage$$'

## bench-overhead: per-job cost of `llmq worker` (no budget) against a plain asynq handler
## doing the same call and one SET, side by side: rates, ratio, CPU and Redis commands per job
bench-overhead: build
	go run ./bench/overhead -bin $(BIN)

## bench-redis: jobs/s on one Redis vs a 3-master cluster, 1, 3 and 6 queues, with Redis CPU per job
bench-redis:
	go run ./bench/redisha -jobs 6000 -queues 1,3,6

## drill: fault drills against real processes (bin/llmq workers, own Redis, fake upstream), long form; prints the table
drill: build redis
	go run ./drill/cmd/drill -bin $(BIN) -size long

## fuzz: run each fuzzer briefly
fuzz:
	bash scripts/fuzz.sh 10s

clean:
	rm -rf bin demo/out
