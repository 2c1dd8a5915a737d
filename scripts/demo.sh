#!/usr/bin/env bash
# make demo: the fake upstream and one worker on this machine, a 200-prompt
# batch through them, results written as JSONL, then everything stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/llmq}
OUT=demo/out
mkdir -p "$OUT"
export LLMQ_CONFIG=demo/llmq.yaml
PORT=${DEMO_PORT:-$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null || echo 18089)}
export OPENAI_BASE_URL="http://127.0.0.1:$PORT/v1"
export OPENAI_API_KEY="sk-demo-not-a-real-key"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BIN" fake-upstream --addr "127.0.0.1:$PORT" --latency 40ms --faults 'random:503=3%,ratelimit=2%,reset=1%' 2>"$OUT/fake-upstream.log" &
pids+=($!)
"$BIN" worker 2>"$OUT/worker.log" &
pids+=($!)
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

start=$(date +%s.%N)
batch="demo-$(date +%Y%m%d-%H%M%S)"
"$BIN" enqueue demo/prompts.jsonl --batch "$batch" --wait
"$BIN" results --batch "$batch" -o "$OUT/results.jsonl" --errors "$OUT/errors.jsonl" 2>"$OUT/summary.txt"
end=$(date +%s.%N)
wall=$(python3 -c "print(f'{$end-$start:.1f}')")
echo "demo: $(cat "$OUT/summary.txt"); wall ${wall}s; results in $OUT/results.jsonl, logs in $OUT/"
echo "upstream served: $(curl -fs "http://127.0.0.1:$PORT/_fake/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("total_requests", s.get("requests")), "requests", json.dumps(s.get("by_status")))' 2>/dev/null || echo '?')"
