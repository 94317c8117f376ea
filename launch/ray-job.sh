#!/usr/bin/env bash
# Submit a splitnet training job to a running Ray cluster (its dashboard address).
#   RAY_ADDRESS=http://HEAD:8265 launch/ray-job.sh model=alexnet data=imagenet mesh.replicas=4 mesh.devices=2
# The job's driver runs on the head and joins the cluster (launcher.address=auto); each
# replica's ranks are placed on one node. The run folder must be on storage every node reaches:
# RUN_ROOT (default /shared/runs, the cluster file's shared mount) holds it.
# An autoscaling cluster may have no GPU node yet: the job waits up to placement_timeout_s
# (15 minutes here, enough to boot one) for the nodes its replicas need. A cluster of CPU
# nodes only: add launcher.use_gpu=false (auto never falls back to CPU ranks on its own).
set -euo pipefail

: "${RAY_ADDRESS:?set RAY_ADDRESS=http://HEAD:8265 (the dashboard of the cluster)}"
exec ray job submit --address "$RAY_ADDRESS" -- \
    splitnet train launcher=ray launcher.address=auto launcher.max_failures=3 launcher.placement_timeout_s=900 \
    train.run_dir="${RUN_ROOT:-/shared/runs}/ray-$(date +%Y%m%d-%H%M%S)" "$@"
