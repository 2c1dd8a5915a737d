#!/usr/bin/env bash
# Start a throwaway Redis on 127.0.0.1:6379 unless one already answers there.
# Says so in one line whenever it installs or starts something.
set -euo pipefail
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis: no Redis on 127.0.0.1:6379 and no redis-server: installing Debian's redis-server and redis-tools with apt-get" >&2
  (apt-get update -qq && apt-get install -y -qq redis-server redis-tools) >/dev/null
fi
echo "ensure-redis: starting redis-server on 127.0.0.1:6379 (in the background, no persistence; stop it with: redis-cli -p 6379 shutdown nosave)" >&2
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
for _ in $(seq 1 50); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "ensure-redis: Redis did not start on 127.0.0.1:6379" >&2
exit 1
