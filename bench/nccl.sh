#!/usr/bin/env bash
# Two ranks under torchrun (NCCL on GPUs, gloo on a CPU machine): columns D=2 without and with
# chunks, and the pipeline in both orders, each a short training run on synthetic data. Prints
# one line per run: the median training images/s after the first two steps (the run's
# metrics.jsonl), and writes bench/results/<backend>-<model>.txt.
# Under NCCL the 1F1B run is refused in one line (its crossing sends); the line says so.
# Usage: bench/nccl.sh [model] [batch] [steps]   (default: alexnet 128 20)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-alexnet}" batch="${2:-128}" steps="${3:-20}"
backend=$(python -c "import torch; print('nccl' if torch.cuda.device_count() >= 2 else 'gloo')")
classes=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['layers'][-1]['out'])" \
  "conf/model/${model}.yaml")
out="bench/results/${backend}-${model}.txt"
mkdir -p bench/results
: > "$out"
runs=("columns:partition=columns partition.exchange=auto"
      "columns-chunks2:partition=columns partition.exchange=auto partition.chunks=2"
      "pipeline-gpipe:partition=pipeline partition.microbatches=4"
      "pipeline-1f1b:partition=pipeline partition.microbatches=4 partition.schedule=1f1b")
for entry in "${runs[@]}"; do
  name="${entry%%:*}"
  dir=$(mktemp -d)
  # shellcheck disable=SC2086  # the overrides are meant to split into words
  if torchrun --standalone --nproc-per-node=2 -m splitnet train launcher=torchrun model="$model" data=synthetic \
      data.num_classes="$classes" \
      batch_size="$batch" train.max_steps="$steps" mesh.devices=2 comm.backend="$backend" eval.enabled=false optim.schedule=constant \
      train.run_dir="$dir" ${entry#*:} > "$dir/log.txt" 2>&1; then
    python - "$dir/metrics.jsonl" "$name" "$backend" <<'PY' | tee -a "$out"
import json, statistics, sys
rates = [r["images_per_s"] for r in map(json.loads, open(sys.argv[1])) if "images_per_s" in r][2:]
print(f"{sys.argv[2]} ({sys.argv[3]} x2): {statistics.median(rates):.1f} images/s over {len(rates)} steps")
PY
  else
    echo "$name ($backend x2): failed, see $dir/log.txt" | tee -a "$out"
    tail -5 "$dir/log.txt"
  fi
done
