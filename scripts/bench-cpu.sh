#!/usr/bin/env bash
# Side-by-side CPU benchmark: dllm against the PyTorch peer
# (testdata/reference/bench_torch.py) in one run, same machine, same shapes.
# Prints a markdown table with ratios (dllm / PyTorch).
# Needs: apt-get install python3-torch libopenblas0-pthread
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BIN=${BIN:-bin/dllm}
THREADS=${THREADS:-$(nproc)}
CGO_ENABLED=0 go build -o "$BIN" ./cmd/dllm
# OpenBLAS is pinned to an older kernel by these two variables on this kind
# of machine; unset them for the PyTorch peer only (DESIGN.md §6).
torch=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 testdata/reference/bench_torch.py --threads "$THREADS")
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; threads $THREADS; $(date -u +%F)"
echo
echo "| what | dllm | PyTorch | dllm / PyTorch |"
echo "| --- | ---: | ---: | ---: |"
"$BIN" bench --matmul --json --device cpu --threads "$THREADS" > /tmp/dllm-mm.json
"${torch[@]}" --matmul > /tmp/torch-mm.json
python3 - <<'PY'
import json
d = {r["shape"]: r["gflops"] for r in json.load(open("/tmp/dllm-mm.json"))}
t = {r["shape"]: r["gflops"] for r in json.load(open("/tmp/torch-mm.json"))}
for k in d:
    print(f"| matmul {k}, GFLOP/s | {d[k]:.0f} | {t[k]:.0f} | {d[k]/t[k]:.2f} |")
PY
step() { # name, dllm source flag, torch config, batch, seq, steps
  "$BIN" bench $2 --batch "$4" --seq-len "$5" --steps "$6" --warmup 2 --json --device cpu --threads "$THREADS" > /tmp/dllm-step.json
  "${torch[@]}" --config "$3" --batch "$4" --seq-len "$5" --steps "$6" --warmup 2 > /tmp/torch-step.json
  python3 - "$1" <<'PY'
import json, sys
d, t = json.load(open("/tmp/dllm-step.json")), json.load(open("/tmp/torch-step.json"))
print(f"| train step {sys.argv[1]}, tokens/s | {d['tokens_per_second']:.0f} | {t['tokens_per_second']:.0f} | {d['tokens_per_second']/t['tokens_per_second']:.2f} |")
PY
}
step "stories260K B8 L256" "--model $SHARED/models/stories260K" "$SHARED/models/stories260K/config.json" 8 256 20
step "llama-42m B4 L512" "--arch testdata/configs/llama-42m.json" testdata/configs/llama-42m.json 4 512 4
