#!/usr/bin/env bash
# The story task (testdata/storytask) against training budget and seed: exports
# checkpoint-STEP of each long run (RUNS/pretrained, RUNS/random: stories260K,
# 2000 steps x 8 x 256 tokens = 1x) without training, checks that the export's
# held-out NELBO equals the run's own eval at that step, scores it in diffusion
# mode once per seed, and prints one table: mean accuracy over seeds, the
# seeds' sd, and the per-item standard error, beside the AR source.
# Usage: scripts/story-budget.sh RUNS
# Env: STEPS (default "2000 4000 10000"), SEEDS (default "1 2 3 4 5"), MC (32),
# MCS (e.g. "8 32 128": also the Monte-Carlo study on MC_MODEL, default
# pretrained-2000), WORK (exports and --json outputs, reused when present;
# default runs/story-budget), SRC, BIN, THREADS (1).
# The table lists every seed found in WORK for each model and MC, so a rerun
# with fewer SEEDS still shows the earlier ones.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] && [ -d "$1" ] || { echo "usage: scripts/story-budget.sh RUNS (a folder with pretrained/ and random/ runs)" >&2; exit 2; }
RUNS=$(cd "$1" && pwd)
SRC=${SRC:-../shared/models/stories260K}
BIN=${BIN:-bin/dllm}
STEPS=${STEPS:-2000 4000 10000}
SEEDS=${SEEDS:-1 2 3 4 5}
MC=${MC:-32}
MCS=${MCS:-}
MC_MODEL=${MC_MODEL:-pretrained-2000}
WORK=${WORK:-runs/story-budget}
THREADS=${THREADS:-1}
TASK=testdata/storytask/tinystories-heldout.jsonl
[ -x "$BIN" ] || CGO_ENABLED=0 go build -o "$BIN" ./cmd/dllm
mkdir -p "$WORK"

# export NAME STEP: WORK/NAME-STEP/final from RUNS/NAME/checkpoint-STEP.
export_one() {
  local run=$RUNS/$1 d=$WORK/$1-$2
  [ -f "$d/final/model.safetensors" ] && return 0
  [ -d "$run/checkpoint-$2" ] || { echo "no $run/checkpoint-$2 (not reached yet, or removed by the run's --keep)" >&2; exit 1; }
  rm -rf "$d" && mkdir -p "$d"
  cp "$run/run_config.json" "$d/" && cp -r "$run/cache" "$run/checkpoint-$2" "$d/"
  nice -n 15 "$BIN" convert --out "$d" --resume --steps "$2" --threads "$THREADS" --quiet > "$d/convert.log" 2>&1 ||
    { echo "export of $1 step $2 failed: see $d/convert.log" >&2; exit 1; }
  python3 - "$d" "$run/metrics.jsonl" "$2" <<'PY'
import json, sys
d, metrics, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
recs = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if l.strip()]
if any(r.get("type") == "train" for r in recs):
    sys.exit(f"{d}: the export trained (train records in its metrics.jsonl)")
ref = [json.loads(l) for l in open(metrics) if '"eval"' in l]
ref = [r["eval"]["nelbo"] for r in ref if r.get("type") == "eval" and r["step"] == step]
got = json.load(open(f"{d}/summary.json"))["eval_after"]["nelbo"]
if not ref or abs(ref[-1] - got) > 1e-9:
    sys.exit(f"{d}: held-out NELBO {got} != the run's eval at step {step}: {ref}")
print(f"exported {d}/final: NELBO {got:.4f} = the run's eval at step {step}, no training step", file=sys.stderr)
PY
}

# score NAME MC SEED: WORK/NAME.mcMC.seedSEED.json
score() {
  local out=$WORK/$1.mc$2.seed$3.json
  [ -s "$out" ] && return 0
  echo "scoring $1 --mc $2 --seed $3" >&2
  nice -n 15 "$BIN" eval "$WORK/$1/final" --task "$TASK" --mode diffusion --mc "$2" --seed "$3" --json \
    --threads "$THREADS" 2> "$out.log" > "$out.tmp" || { echo "eval failed: see $out.log" >&2; exit 1; }
  mv "$out.tmp" "$out"
}

if [ ! -s "$WORK/ar.json" ]; then
  nice -n 15 "$BIN" eval "$SRC" --task "$TASK" --mode ar --json --threads "$THREADS" 2> "$WORK/ar.json.log" > "$WORK/ar.json.tmp" ||
    { echo "AR eval of $SRC failed: $(tail -n 3 "$WORK/ar.json.log")" >&2; exit 1; }
  mv "$WORK/ar.json.tmp" "$WORK/ar.json"
fi
for step in $STEPS; do
  for name in pretrained random; do
    export_one "$name" "$step"
    for s in $SEEDS; do score "$name-$step" "$MC" "$s"; done
  done
done
for mc in $MCS; do
  for s in $SEEDS; do score "$MC_MODEL" "$mc" "$s"; done
done

python3 - "$WORK" "$MC" "$MC_MODEL" "$STEPS" "$MCS" <<'PY'
import glob, json, re, statistics, sys
work, mc, mcmodel, steps, mcs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5].split()

def runs(name, mc):
    out = []
    for p in glob.glob(f"{work}/{name}.mc{mc}.seed*.json"):
        out.append((int(re.search(r"seed(\d+)", p).group(1)), json.load(open(p))))
    return sorted(out, key=lambda x: x[0])

def cell(rs, key):
    v = [r[key] for _, r in rs]
    se = statistics.mean(r[key + "_stderr"] for _, r in rs)
    sd = "%.4f" % statistics.stdev(v) if len(v) > 1 else "-"
    return "%.4f | %s | %.4f" % (statistics.mean(v), sd, se)

def pooled(rs):
    # accuracy of the scores averaged over the seeds (one bound with len(rs) x MC samples)
    ex = [r["examples"] for _, r in rs]
    hit = 0
    for es in zip(*ex):
        avg = [sum(e["scores"][j] for e in es) / len(es) for j in range(len(es[0]["scores"]))]
        hit += max(range(len(avg)), key=avg.__getitem__) == es[0]["label"]
    return "%.4f" % (hit / len(ex[0]))

def nelbo(name):
    return json.load(open(f"{work}/{name}/summary.json"))["eval_after"]["nelbo"]

print("| model | step (budget) | tokens | held-out NELBO | seeds | acc | seed sd | item SE | acc_norm | seed sd | item SE | acc, seeds' scores averaged |")
print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
ar = json.load(open(f"{work}/ar.json"))
print("| stories260K (AR source, exact) | - | - | - | - | %.4f | - | %.4f | %.4f | - | %.4f | - |" % (
    ar["accuracy"], ar["accuracy_stderr"], ar["accuracy_norm"], ar["accuracy_norm_stderr"]))
for step in steps:
    for name in ("pretrained", "random"):
        rs = runs(f"{name}-{step}", mc)
        if not rs:
            continue
        print("| %s conversion | %s (%gx) | %.2fM | %.4f | %s | %s | %s | %s |" % (name, step, int(step) / 2000,
              int(step) * 8 * 256 / 1e6, nelbo(f"{name}-{step}"), ",".join(str(s) for s, _ in rs),
              cell(rs, "accuracy"), cell(rs, "accuracy_norm"), pooled(rs)))
if mcs:
    print()
    print(f"Monte-Carlo samples, {mcmodel}:")
    print("| --mc | seeds | acc | seed sd | item SE | acc_norm | seed sd | item SE | items whose verdict changes with the seed | acc, seeds' scores averaged | seconds per eval |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in mcs:
        rs = runs(mcmodel, m)
        if rs:
            right = [[max(range(len(e["scores"])), key=e["scores"].__getitem__) == e["label"] for e in r["examples"]] for _, r in rs]
            flips = "%d of %d" % (sum(len(set(v)) > 1 for v in zip(*right)), len(right[0])) if len(rs) > 1 else "-"
            print("| %s | %s | %s | %s | %s | %s | %.0f |" % (m, ",".join(str(s) for s, _ in rs), cell(rs, "accuracy"),
                  cell(rs, "accuracy_norm"), flips, pooled(rs), statistics.mean(r["seconds"] for _, r in rs)))
PY
