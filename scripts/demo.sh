#!/usr/bin/env bash
# The embedded default: makes a small RWKV-7 with the engine itself (official initialisation,
# byte-level vocabulary) and generates from it. No download. The model is untrained: its text is
# noise; the demo shows the whole path (init, .pth writing and loading, both forms, sampling).
set -euo pipefail
build=${1:-build}
model="$build/demo/untrained-rwkv7-L4-D256.pth"
mkdir -p "$build/demo"
[ -f "$model" ] || "$build/rwkv" init --out "$model" --layers 4 --embd 256 --head-size 64 --vocab 256 --seed 7
"$build/rwkv" info "$model"
echo
echo "NOTE: this model is UNTRAINED (official RWKV-7 initialisation, no training): expect noise."
echo "      For real text, pass an official checkpoint: build/rwkv generate --model RWKV-x070-World-….pth --prompt …"
echo
"$build/rwkv" generate --model "$model" --prompt "RWKV is a recurrent network that" --max-tokens 64 --seed 1
