#!/usr/bin/env bash
# One NVIDIA GPU: the reference and splitnet at D=1, float32 and bf16 autocast, beside the
# dense-math peak measured in the same run. Writes bench/results/gpu-<model>.json.
# Usage: bench/gpu.sh [model] [batch] [steps]   (default: alexnet 128 20)
# Not yet run on a GPU. NCCL over 2+ GPUs waits for a torchrun launcher in splitnet.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
mkdir -p bench/results
python -m splitnet.bench.gpu "${1:-alexnet}" "${2:-128}" "${3:-20}" | tee "bench/results/gpu-${1:-alexnet}.json"
