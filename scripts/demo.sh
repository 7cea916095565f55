#!/usr/bin/env bash
# The embedded default: generates from the project's own model, models/fortunes-rwkv7.pth, a
# small byte-level RWKV-7 trained with `rwkv train` on Debian's fortune cookies (retrain it with
# scripts/train-demo-model.sh). No download.
set -euo pipefail
build=${1:-build}
model=models/fortunes-rwkv7.pth
"$build/rwkv" info "$model"
echo
for prompt in "Q: Why did the programmer" "Never trust a" "The secret of life is"; do
  echo "--- prompt: $prompt"
  "$build/rwkv" generate --model "$model" --tokenizer bytes --prompt "$prompt" \
    --max-tokens 240 --temperature 0.8 --top-p 0.9 --seed 1 --stop $'\n%\n'
  echo
done
