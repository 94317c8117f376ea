#!/usr/bin/env bash
# Submit a splitnet training job to a running Ray cluster (its dashboard address).
#   RAY_ADDRESS=http://HEAD:8265 launch/ray-job.sh model=alexnet data=imagenet mesh.replicas=4 mesh.devices=2
# The job's driver runs on the head and joins the cluster (launcher.address=auto); each
# replica's ranks are placed on one node. The run folder must be on storage every node reaches.
set -euo pipefail

: "${RAY_ADDRESS:?set RAY_ADDRESS=http://HEAD:8265 (the dashboard of the cluster)}"
exec ray job submit --address "$RAY_ADDRESS" -- \
    splitnet train launcher=ray launcher.address=auto launcher.max_failures=3 \
    train.run_dir="/shared/runs/ray-$(date +%Y%m%d-%H%M%S)" "$@"
