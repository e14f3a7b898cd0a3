#!/usr/bin/env bash
# The story-continuation task (testdata/storytask, built from the stories that
# scripts/stories260k-experiment.sh holds out) on the AR source and converted
# models, one table: accuracy and acc_norm with standard errors, tokens/s.
# Usage: scripts/story-task.sh CONVERTED_DIR... (e.g. runs/pretrained/final runs/random/final)
# Env: SRC (default ../shared/models/stories260K), MC (default 32), BIN, THREADS,
# OUT (keep each model's --json output there).
# Below the table: how often the true continuation outscores each kind of
# distractor (word-shuffled, swapped sentences, another story's sentences).
# scripts/story-budget.sh: the same task over seeds and the long runs' budgets.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${SRC:-../shared/models/stories260K}
BIN=${BIN:-bin/dllm}
MC=${MC:-32}
TASK=testdata/storytask/tinystories-heldout.jsonl
[ -x "$BIN" ] || CGO_ENABLED=0 go build -o "$BIN" ./cmd/dllm
if [ -n "${OUT:-}" ]; then tmp=$OUT; mkdir -p "$tmp"; else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
fi
"$BIN" eval "$SRC" --task "$TASK" --mode ar --json --threads "${THREADS:-1}" > "$tmp/0.json"
echo "$SRC ar" > "$tmp/0.name"
i=1
for d in "$@"; do
  "$BIN" eval "$d" --task "$TASK" --mode diffusion --mc "$MC" --json --threads "${THREADS:-1}" > "$tmp/$i.json"
  echo "$d diffusion" > "$tmp/$i.name"
  i=$((i + 1))
done
python3 - "$tmp" "$i" "$TASK" <<'PY'
import json, sys
tmp, n, task = sys.argv[1], int(sys.argv[2]), sys.argv[3]
items = [json.loads(l) for l in open(task) if l.strip()]
print("%-36s %-10s %-17s %-17s %9s" % ("model", "mode", "acc", "acc_norm", "tokens/s"))
for k in range(n):
    name, mode = open(f"{tmp}/{k}.name").read().split()
    r = json.load(open(f"{tmp}/{k}.json"))
    print("%-36s %-10s %.4f ± %.4f   %.4f ± %.4f   %9.0f" % (name, mode, r["accuracy"], r["accuracy_stderr"],
          r["accuracy_norm"], r["accuracy_norm_stderr"], r["tokens_per_second"]))
print()
print("true continuation scored above each distractor kind (fraction of items):")
kinds = ["word-shuffled", "swapped", "foreign"]
print("%-36s %-10s " % ("model", "mode") + " ".join("%14s" % k for k in kinds))
for k in range(n):
    name, mode = open(f"{tmp}/{k}.name").read().split()
    r = json.load(open(f"{tmp}/{k}.json"))
    wins = {x: 0 for x in kinds}
    for it, ex in zip(items, r["examples"]):
        s, t = ex["scores"], it["kinds"].index("true")
        for j, kind in enumerate(it["kinds"]):
            if kind != "true" and s[t] > s[j]:
                wins[kind] += 1
    m = len(r["examples"])
    print("%-36s %-10s " % (name, mode) + " ".join("%14.3f" % (wins[x] / m) for x in kinds))
PY
