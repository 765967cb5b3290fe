#!/usr/bin/env bash
# Stage-1 GPU benchmark (issue 15): random-weight vit_b and vit_h, 50 images made from the CC-BY
# test photos; encoder images/s at batch 1..16, decoder points/s, RLE throughput, GPU memory,
# and the device name. Meant to finish in under 8 minutes on one GPU.
#   scripts/bench_gpu.sh [OUT.json] [extra bench_gpu.py flags, e.g. --dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_gpu.json}"
shift || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
exec timeout 480 python scripts/bench_gpu.py --json "$out" "$@"
