#!/usr/bin/env bash
# Retrains the embedded demo model, models/fortunes-rwkv7.pth: a byte-level RWKV-7 trained with
# `rwkv train` on the fortune cookies of Debian's `fortunes` package (installed by
# scripts/setup-debian.sh). `wisdom` is held out and scored with `rwkv eval` at the end.
# Usage: scripts/train-demo-model.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
build=${1:-build}
work=${2:-$build/demo-train}
corpus=/usr/share/games/fortunes
[ -d "$corpus" ] || { echo "error: $corpus missing: install Debian's fortunes package" >&2; exit 1; }
mkdir -p "$work"
files=()
for f in "$corpus"/*; do
  case "$f" in *.dat|*.u8|*/wisdom) continue ;; esac
  [ -f "$f" ] && files+=("$f")
done
# One document per fortune (they are separated by lines holding a single %), token 0 after each.
"$build/rwkv" tokenize-data "${files[@]}" --split-on '\n%\n' --tokenizer bytes -o "$work/fortunes"
start=$(date +%s)
"$build/rwkv" train --data "$work/fortunes" --out "$work/run" \
  --layers 4 --embd 256 --head-size 64 --vocab-size 256 \
  --ctx 256 --batch 8 --steps 1500 --order magic_prime --reset-at-eod \
  --lr-init 2e-3 --lr-final 1e-4 --warmup-steps 50 --weight-decay 0.001 --grad-clip 1.0 \
  --save-every 250 --save-dtype bf16 --seed 7 --threads 2
echo "training took $(( $(date +%s) - start )) s"
"$build/rwkv" eval -m "$work/run/model.pth" --tokenizer bytes --data "$corpus/wisdom"
mkdir -p models
cp "$work/run/model.pth" models/fortunes-rwkv7.pth
echo "wrote models/fortunes-rwkv7.pth"
