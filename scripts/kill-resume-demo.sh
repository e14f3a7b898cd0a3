#!/usr/bin/env bash
# The convert issue's resume check on the real experiment: start the
# stories260K "pretrained" run of scripts/stories260k-experiment.sh, SIGKILL
# it mid-way, continue with --resume to step 1000, and compare every training
# loss with the uninterrupted run (runs/pretrained/metrics.jsonl, which the
# experiment script writes). Steps redone after the kill are compared too.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BIN=${BIN:-bin/dllm}
KILL_AT=${KILL_AT:-650}
[ -f runs/pretrained/metrics.jsonl ] || { echo "run scripts/stories260k-experiment.sh pretrained first" >&2; exit 2; }
common=(--data "$SHARED/data/tinystories/TinyStories-train-head.txt" --separator single-newline
  --eval-fraction 0.05 --steps 2000 --seq-len 256 --batch-size 8 --lr 1e-3 --lr-schedule constant
  --warmup 0 --weight-decay 0.1 --beta2 0.95 --clip 1 --seed 42 --eval-every 250 --eval-rows 32 --eval-mc 8
  --save-every 100 --threads 2 --force --quiet)
out=runs/killed
"$BIN" convert "$SHARED/models/stories260K" --out "$out" "${common[@]}" 2> "$out.log" &
pid=$!
until [ -f "$out/metrics.jsonl" ] && [ "$(grep -c '"type":"train"' "$out/metrics.jsonl")" -ge "$KILL_AT" ]; do sleep 0.2; done
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "killed at step $(grep -c '"type":"train"' "$out/metrics.jsonl"); checkpoints: $(ls -d "$out"/checkpoint-* | xargs -n1 basename | tr '\n' ' ')"
"$BIN" convert --out "$out" --resume --steps 1000 --quiet 2>> "$out.log"
python3 - "$out" <<'PY'
import json, sys
def train(p):
    out = []
    for l in open(p):
        r = json.loads(l)
        if r["type"] == "train":
            out.append((r["step"], r["loss"], r["grad_norm"]))
    return out
ref = {s: (l, g) for s, l, g in train("runs/pretrained/metrics.jsonl")}
got = train(sys.argv[1] + "/metrics.jsonl")
bad = [(s, l, ref[s][0]) for s, l, g in got if (l, g) != ref[s]]
steps = sorted({s for s, _, _ in got})
print(f"{len(got)} training records (steps {steps[0]}..{steps[-1]}, {len(got) - len(steps)} of them redone after the kill);"
      f" {len(got) - len(bad)} equal the uninterrupted run's loss and gradient norm bit for bit, {len(bad)} differ")
for b in bad[:5]:
    print("  step %d: %r vs %r" % b)
sys.exit(1 if bad else 0)
PY
