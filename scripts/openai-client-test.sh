#!/usr/bin/env bash
# The real `openai` npm client against `dllm serve`: installs the package in
# a temporary folder (never in the repo), converts the tiny llama for a few
# steps, serves it on 127.0.0.1 (any free port, an API key, a chat
# template) and runs testdata/openai/client.test.mjs with node's test
# runner. Exits 0 with a SKIP line when node/npm are absent or the npm
# registry cannot be reached; any failing check fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "SKIP openai client test: $tool is not installed"; exit 0; }
done
tmp=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
if ! (cd "$tmp" && npm init -y >/dev/null && timeout 120 npm install --no-audit --no-fund --silent "openai@${OPENAI_VERSION:-7}" >npm.log 2>&1); then
  echo "SKIP openai client test: 'npm install openai' failed (registry unreachable?):"; tail -3 "$tmp/npm.log"; exit 0
fi
go build -o "$tmp/dllm" ./cmd/dllm
"$tmp/dllm" convert testdata/tiny/llama --data testdata/text/stories.txt --out "$tmp/run" --steps 4 --seq-len 32 \
  --batch-size 4 --eval-rows 4 --eval-mc 1 --seed 1 --threads 2 --quiet >"$tmp/convert.log" 2>&1 || { cat "$tmp/convert.log"; exit 1; }
printf '%s' '{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}' > "$tmp/chat.jinja"
"$tmp/dllm" serve "$tmp/run/final" --port 0 --device cpu --threads 2 --api-key test-key --name tiny \
  --chat-template "$tmp/chat.jinja" 2> "$tmp/serve.log" &
server=$!
for _ in $(seq 300); do
  url=$(sed -n 's/.* on \(http:[^ ]*\) .*/\1/p' "$tmp/serve.log")
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$tmp/serve.log"; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "dllm serve printed no address"; cat "$tmp/serve.log"; exit 1; }
status=0
DLLM_URL="$url/v1" DLLM_KEY=test-key DLLM_BIN="$tmp/dllm" DLLM_MODEL="$tmp/run/final" OPENAI_DIR="$tmp" \
  node --test testdata/openai/client.test.mjs || status=$?
kill -TERM "$server"
wait "$server" || { echo "dllm serve exited $? on SIGTERM"; cat "$tmp/serve.log"; exit 1; }
server=""
grep -q "dllm serve: stopped" "$tmp/serve.log" || { cat "$tmp/serve.log"; exit 1; }
[ "$status" = 0 ] || { echo "--- serve log"; tail -20 "$tmp/serve.log"; exit "$status"; }
echo "openai client test: ok ($(grep -c ' /v1/' "$tmp/serve.log") requests logged)"
