#!/usr/bin/env bash
# Samples and decoding speed of the stories260K conversions
# (scripts/stories260k-experiment.sh writes runs/<name>/final).
#   scripts/stories260k-samples.sh samples [run...]   5 samples per --alg, steps = gen-len and gen-len/4
#   scripts/stories260k-samples.sh quality RUN [generate flags...]
#       16 samples of 128 tokens (block 32, steps 128, temperature 0.8), scored
#       by the source AR model: the generative cross-entropy (lower: closer to
#       what stories260K itself would write) and the distinct-bigram ratio
#   scripts/stories260k-samples.sh speed RUN [--no-cache]
#       tokens/s of gen-len 256 in blocks of 32 (steps 64, 256, threshold 0.9)
#       against AR decoding of the source model, same machine, one run
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BIN=${BIN:-bin/dllm}
[ -x "$BIN" ] || CGO_ENABLED=0 go build -o "$BIN" ./cmd/dllm
what=${1:-samples}; shift || true
case "$what" in
samples)
  runs=("$@"); [ ${#runs[@]} -gt 0 ] || runs=(pretrained random)
  for r in "${runs[@]}"; do
    for alg in confidence margin entropy random; do
      for steps in 128 32; do
        echo "### $r, --alg $alg, gen-len 128, steps $steps, temperature 0.8"
        "$BIN" generate "runs/$r/final" --prompt "Once upon a time" --gen-len 128 --steps "$steps" --alg "$alg" \
          --temperature 0.8 --batch 5 --seed 1 --threads 2 2>&1 | sed 's/^/    /'
      done
    done
  done ;;
quality)
  run=$1; shift
  f=$(mktemp)
  "$BIN" generate "runs/$run/final" --prompt "Once upon a time" --gen-len 128 --steps 128 --block-len 32 \
    --temperature 0.8 --batch 16 --seed 5 --threads 2 "$@" 2>/dev/null | grep -v '^--- sample' | awk 'BEGIN{RS="";ORS="\n\n"}{gsub("\n"," ");print}' > "$f"
  ce=$("$BIN" eval "$SHARED/models/stories260K" --data "$f" --mode ar --json --threads 2 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["cross_entropy"],3))')
  d=$(python3 - "$f" <<'PY'
import sys
w = open(sys.argv[1]).read().split()
b = list(zip(w, w[1:]))
print(round(len(set(b)) / max(len(b), 1), 3))
PY
)
  echo "| $run $* | $ce | $d |"
  rm -f "$f" ;;
speed)
  run=$1; shift
  tps() { grep -o '[0-9.]* tokens/s' | head -1 | cut -d' ' -f1; }
  ar=$("$BIN" generate "$SHARED/models/stories260K" --ar --prompt "Once upon a time" --gen-len 256 --threads 2 2>&1 >/dev/null | tps)
  echo "| decoding of 256 tokens | tokens/s | vs AR |"
  echo "| --- | ---: | ---: |"
  echo "| AR, KV cache (source model) | $ar | 1.00 |"
  for s in "--steps 256" "--steps 64" "--steps 256 --threshold 0.9"; do
    # shellcheck disable=SC2086
    d=$("$BIN" generate "runs/$run/final" --prompt "Once upon a time" --gen-len 256 --block-len 32 $s "$@" --threads 2 2>&1 >/dev/null | tps)
    echo "| $run, block 32, $s $* | $d | $(python3 -c "print(f'{$d/$ar:.2f}')") |"
  done ;;
esac
