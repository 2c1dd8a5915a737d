#!/usr/bin/env bash
# make demo: the fake upstream and one worker on this machine, a 200-prompt
# batch through them, results written as JSONL, then everything stopped.
# Needs only bash, coreutils and grep besides bin/llmq and Redis: every port
# is picked by the OS, nothing fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/llmq}
OUT=demo/out
mkdir -p "$OUT"
export LLMQ_CONFIG=demo/llmq.yaml
export OPENAI_API_KEY="sk-demo-not-a-real-key"
export LLMQ_METRICS_ADDR=off # no port of the machine taken; the demo does not scrape
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# fail NAME LOG: NAME could not start; show why and stop.
fail() { echo "demo: $1 did not start:" >&2; tail -n 20 "$2" >&2; exit 1; }

# await PID LOG PATTERN: wait until LOG matches PATTERN; fail if PID exits first.
await() {
  for _ in $(seq 1 200); do
    grep -q "$3" "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

"$BIN" fake-upstream --addr 127.0.0.1:0 --latency 40ms --faults 'random:503=3%,ratelimit=2%,reset=1%' 2>"$OUT/fake-upstream.log" &
pids+=($!)
await "$!" "$OUT/fake-upstream.log" 'fake upstream serving' || fail "the fake upstream" "$OUT/fake-upstream.log"
addr=$(grep -o '"addr":"[^"]*"' "$OUT/fake-upstream.log" | head -n 1 | cut -d'"' -f4)
export OPENAI_BASE_URL="http://$addr/v1"

"$BIN" worker 2>"$OUT/worker.log" &
worker=$!
pids+=("$worker")
await "$worker" "$OUT/worker.log" 'worker started' || fail "the worker" "$OUT/worker.log"

start=$(date +%s%N)
batch="demo-$(date +%Y%m%d-%H%M%S)"
"$BIN" enqueue demo/prompts.jsonl --batch "$batch" --wait &
enqueue=$!
pids+=("$enqueue")
# Whichever ends first: the batch, or the worker (then the batch never would).
while kill -0 "$enqueue" 2>/dev/null; do
  if ! kill -0 "$worker" 2>/dev/null; then
    echo "demo: the worker stopped before the batch finished:" >&2
    tail -n 20 "$OUT/worker.log" >&2
    exit 1
  fi
  sleep 0.2
done
wait "$enqueue"
"$BIN" results --batch "$batch" -o "$OUT/results.jsonl" --errors "$OUT/errors.jsonl" 2>"$OUT/summary.txt"
ms=$((($(date +%s%N) - start) / 1000000))
echo "demo: $(cat "$OUT/summary.txt"); wall $((ms / 1000)).$((ms % 1000 / 100))s; results in $OUT/results.jsonl, logs in $OUT/"
