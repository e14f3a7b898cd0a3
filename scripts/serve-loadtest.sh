#!/usr/bin/env bash
# Load test of dllm serve on 127.0.0.1: two servers of MODEL at once
# (--max-batch 1 and 8, 2 CPU threads each), every level of concurrent
# clients measured on both in turn, twice; N requests per level (48), at
# most 60 s each. The numbers of BENCHMARKS.md "Serving".
#   scripts/serve-loadtest.sh /tmp/s260k/final
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/serve-loadtest.sh MODEL_DIR}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
go build -o "$tmp/dllm" ./cmd/dllm
go build -o "$tmp/loadtest" ./serve/loadtest
body='{"prompt": "Once upon a time", "max_tokens": 32, "steps": 32, "block_length": 32, "temperature": 0.8, "stop_at_eos": false}'
for mb in 1 8; do
  nice "$tmp/dllm" serve "$model" --port 0 --device cpu --threads 2 --max-batch $mb 2> "$tmp/serve-$mb.log" &
  pids+=($!)
  until grep -q "on http" "$tmp/serve-$mb.log"; do sleep 0.2; done
  declare "url$mb=$(sed -n 's/.* on \(http:[^ ]*\) .*/\1/p' "$tmp/serve-$mb.log")"
done
echo "| round | --max-batch | clients | requests | seconds | requests/s | p50 latency | p99 latency | completion tokens/s | mean batch rows |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for round in 1 2; do
  for c in 1 4 16; do
    for mb in 1 8; do
      u=url$mb
      row=$(nice "$tmp/loadtest" -url "${!u}" -clients $c -requests "${N:-48}" -max-time 60s -body "$body" | tail -1)
      echo "| $round | $mb $row"
    done
  done
done
for mb in 1 8; do
  # Decode time of a batch, from the log lines: seconds minus time queued.
  sed -nE 's/.* 200 ([0-9.]+)s .*batch=([0-9]+) queued=([0-9.]+)s.*/\2 \1 \3/p' "$tmp/serve-$mb.log" |
    awk -v mb=$mb '{d[$1]+=$2-$3; n[$1]++} END {for (b in d) printf "--max-batch %d: %d requests in batches of %d rows, %.3f s decoding each\n", mb, n[b], b, d[b]/n[b]}'
done
