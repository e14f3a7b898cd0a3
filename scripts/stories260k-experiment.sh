#!/usr/bin/env bash
# The convert issue's experiment: stories260K converted on TinyStories-train-head
# (5% of the stories held out) for 2000 steps of 8 x 256 tokens, from the
# pretrained weights and from random ones, plus the ablations, all with the
# same seed and budget, and (wsd) LLaDA 2.0's block-size schedule 1 -> 4 -> 32 ->
# full -> 32 on the same budget. Writes runs/<name>/ and prints one table.
# Usage: scripts/stories260k-experiment.sh [names...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BIN=${BIN:-bin/dllm}
[ -x "$BIN" ] || CGO_ENABLED=0 go build -o "$BIN" ./cmd/dllm
common=(--data "$SHARED/data/tinystories/TinyStories-train-head.txt" --separator single-newline
  --eval-fraction 0.05 --steps 2000 --seq-len 256 --batch-size 8 --lr 1e-3 --lr-schedule constant
  --warmup 0 --weight-decay 0.1 --beta2 0.95 --clip 1 --seed 42 --eval-every 250 --eval-rows 32 --eval-mc 8
  --save-every 500 --threads 2 --force)
declare -A extra=(
  [pretrained]=""
  [random]="--init random"
  [anneal0]="--anneal-steps 0"
  [anneal50]="--anneal-steps 1000"
  [noshift]="--shift=false"
  [cart]="--weighting cart"
  [wsd]="--block-schedule 1:200,4:200,32:200,full:1200,32:200"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(pretrained random anneal0 anneal50 noshift cart)
for n in "${names[@]}"; do
  echo "== $n: ${extra[$n]}" >&2
  # shellcheck disable=SC2086
  "$BIN" convert "$SHARED/models/stories260K" --out "runs/$n" "${common[@]}" ${extra[$n]} --quiet \
    > "runs-$n.log" 2>&1 || { echo "run $n failed: see runs-$n.log" >&2; exit 1; }
  mv "runs-$n.log" "runs/$n/convert.log"
done
printf '%-12s %10s %10s %9s %9s %9s %10s\n' run "NELBO0" "NELBO" "acc@.15" "acc@.5" "acc@.9" "tok/s"
for n in "${names[@]}"; do
  python3 - "$n" <<'PY'
import json, sys
n = sys.argv[1]
s = json.load(open(f"runs/{n}/summary.json"))
b, a = s["eval_before"], s["eval_after"]
acc = [x["accuracy"] for x in a["accuracy"]]
print(f"{n:<12} {b['nelbo']:10.4f} {a['nelbo']:10.4f} {acc[0]:9.3f} {acc[1]:9.3f} {acc[2]:9.3f} {s['tokens_per_second']:10.0f}")
PY
done
