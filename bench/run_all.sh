#!/usr/bin/env bash
# The comparison of issue #11 on this machine: every suite on alexnet_small, then the
# throughput suite on each model the issue names. Results (JSON, markdown, PNG) land in
# bench/results/<case>/; bench/RESULTS.md says what they showed and under which load.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
uptime
splitnet bench all model=alexnet_small batch_size=64 out="$out/alexnet_small-b64"
splitnet bench throughput model=alexnet_small batch_size=128 out="$out/alexnet_small-b128"
splitnet bench throughput model=alexnet_cifar batch_size=64 out="$out/alexnet_cifar-b64"
splitnet bench throughput model=alexnet batch_size=32 bench.rounds=2 bench.steps=2 bench.warmup=1 \
  out="$out/alexnet-b32"
uptime
