#!/usr/bin/env bash
# CPU benchmark of every generation for BENCHMARKS.md: `rwkv bench` on a 0.1B model of each
# (`rwkv init --generation G --layers 12 --embd 768 --vocab 65536`), RUNS times each, plus the
# quantized block formats on the last model. Usage:
#   scripts/bench-generations.sh DIR [THREADS] [RUNS]   (DIR holds v4/v5.2/v6/v7-0.1b.pth)
set -euo pipefail
dir=$1
threads=${2:-2}
runs=${3:-2}
rwkv=${RWKV:-build/rwkv}
echo "commit $(git rev-parse --short HEAD)  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for g in v4 v5.2 v6 v7; do
  for _ in $(seq "$runs"); do
    "$rwkv" bench --model "$dir/$g-0.1b.pth" --threads "$threads" | sed "s/^/[$g bf16] /"
  done
done
for dtype in q8_0 q5_1 q4_0; do
  "$rwkv" bench --model "$dir/v7-0.1b.pth" --threads "$threads" --dtype "$dtype" | sed "s/^/[v7 $dtype] /"
done
