#!/usr/bin/env bash
# Benchmarks `rwkv serve`: starts it on MODEL, runs bench/serve_load.py at each concurrency, and
# stops it. Extra arguments go to `rwkv serve` (e.g. --device cuda, --slots 64, --tokenizer).
#   scripts/bench-serve.sh MODEL "1 8 32 64" MAX_TOKENS PROMPT_BYTES [serve options...]
set -euo pipefail
model=$1 levels=${2:-"1 8 32 64"} max_tokens=${3:-64} prompt_bytes=${4:-200}
shift $(( $# < 4 ? $# : 4 ))
build=${BUILD:-build}
log=$(mktemp)
"$build/rwkv" serve -m "$model" --port 0 --max-requests 256 --max-queued 256 "$@" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  port=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$log")
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
head -1 "$log"
python3 "$(dirname "$0")/../bench/serve_load.py" "http://127.0.0.1:$port" "$pid" "$levels" "$max_tokens" \
  "$prompt_bytes" || { echo "--- server log"; tail -20 "$log"; exit 1; }
