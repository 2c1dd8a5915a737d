#!/usr/bin/env bash
# Run every fuzz target in the module briefly, one after another:
#   scripts/fuzz.sh [DURATION]        (default 10s per target)
# Targets are found, not listed: any `func FuzzX(` in a *_test.go file runs,
# so fuzzers added later (upstream, policy, ...) are included. Each runs as
#   go test -run '^$' -fuzz '^FuzzX$' -fuzztime DURATION ./pkg
# New crashers land in pkg/testdata/fuzz/FuzzX/: commit them with the fix.
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is busy (golang/go#75804,
# fixed in Go 1.27), on a loaded machine: such a run, with no failing input
# written, is reported and run once more; any other failure fails.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
bash scripts/ensure-redis.sh # the producer's fuzzer enqueues into the real Redis
mapfile -t files < <(grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . | sort)
ran=0
for file in "${files[@]}"; do
  pkg="./$(dirname "${file#./}")"
  for target in $(grep -oE '^func Fuzz[A-Za-z0-9_]*\(' "$file" | sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\($/\1/'); do
    for try in 1 2; do
      echo "== $target $pkg ($duration)"
      if out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$duration" "$pkg" 2>&1); then
        echo "$out"
        break
      fi
      echo "$out"
      if [[ $try == 2 ]] || ! grep -q 'context deadline exceeded' <<<"$out" || grep -qE 'Failing input written|panic:' <<<"$out"; then
        exit 1
      fi
      echo "fuzz: $target: the fuzz coordinator's deadline race (golang/go#75804), no failing input: once more"
    done
    ran=$((ran + 1))
  done
done
echo "fuzz: $ran targets ran for $duration each, no failure"
