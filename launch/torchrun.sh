#!/usr/bin/env bash
# splitnet under torchrun, one node or several. Extra arguments are Hydra overrides.
#
#   launch/torchrun.sh model=alexnet data=imagenet data.root=/data/shards
#       one node, one rank per GPU (NPROC=N to choose; CPU machines: NPROC=2)
#   NNODES=2 NODE_RANK=0 RDZV=node0:29400 JOB_ID=run42 launch/torchrun.sh model=alexnet ...   (on node 0)
#   NNODES=2 NODE_RANK=1 RDZV=node0:29400 JOB_ID=run42 launch/torchrun.sh model=alexnet ...   (on node 1)
#       several nodes: c10d rendezvous at RDZV; JOB_ID names the run folder runs/torchrun-$JOB_ID,
#       which must be on storage every node reaches (or pass train.run_dir=/shared/...).
#
# MAX_RESTARTS (default 3): after a rank dies, torchrun restarts every rank and the job
# resumes from its latest complete checkpoint by itself.
set -euo pipefail

NPROC="${NPROC:-gpu}"
NNODES="${NNODES:-1}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"

if [[ "$NNODES" == 1 ]]; then
    exec torchrun --standalone --nproc-per-node="$NPROC" --max-restarts="$MAX_RESTARTS" \
        -m splitnet train launcher=torchrun "$@"
fi
: "${RDZV:?multi-node: set RDZV=HOST:PORT (the rendezvous host, e.g. node 0)}"
: "${JOB_ID:?multi-node: set JOB_ID (the same on every node; it names the run folder)}"
exec torchrun --nnodes="$NNODES" --node-rank="${NODE_RANK:?set NODE_RANK}" --nproc-per-node="$NPROC" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV" --rdzv-id="$JOB_ID" --max-restarts="$MAX_RESTARTS" \
    -m splitnet train launcher=torchrun "$@"
