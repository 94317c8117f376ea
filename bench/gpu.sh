#!/usr/bin/env bash
# One NVIDIA GPU: the reference and splitnet at D=1, float32 and bf16 autocast, beside the
# dense-math peak measured in the same run. Writes bench/results/gpu-<model>.json.
# Usage: bench/gpu.sh [model] [batch] [steps]   (default: alexnet 128 20)
# With 2+ GPUs it then runs bench/nccl.sh (two ranks under torchrun on NCCL). Not yet run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
mkdir -p bench/results
python -m splitnet.bench.gpu "${1:-alexnet}" "${2:-128}" "${3:-20}" | tee "bench/results/gpu-${1:-alexnet}.json"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  bench/nccl.sh "${1:-alexnet}" "${2:-128}" "${3:-20}"
fi
