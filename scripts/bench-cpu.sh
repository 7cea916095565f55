#!/usr/bin/env bash
# CPU benchmark of BENCHMARKS.md: `rwkv bench` on one model at each weight precision, RUNS times
# each (the machine is shared: read the spread, and the ratio to the bound measured in the
# same run). Usage: scripts/bench-cpu.sh MODEL.pth [THREADS] [RUNS]
set -euo pipefail
model=$1
threads=${2:-2}
runs=${3:-3}
rwkv=${RWKV:-build/rwkv}
echo "commit $(git rev-parse --short HEAD)  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for dtype in bf16 fp16 fp32; do
  for _ in $(seq "$runs"); do
    "$rwkv" bench --model "$model" --threads "$threads" --dtype "$dtype" | sed "s/^/[$dtype] /"
  done
done
