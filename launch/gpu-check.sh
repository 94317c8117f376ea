#!/usr/bin/env bash
# The CUDA/NCCL path on a machine with NVIDIA GPUs, for whatever the GPU count allows:
#   launch/gpu-check.sh                      # every check the GPUs allow; the summary is the last line
#   GPUS=2 launch/gpu-check.sh               # use only the first 2 GPUs
# Every check runs whatever the earlier ones did; each one's output is in $OUT/NAME.log, and
# the last line printed is one JSON summary: {"gpus": N, "ok": ..., "checks": [{name, ok, seconds, last}]}.
#   always   the environment; `splitnet verify` under comm.nccl_rules=true (CPU processes)
#   1+ GPU   the reference and D=1 on cuda:0, fp32 and bf16, images/s beside the GPU's own
#            measured dense matmul peak (python -m splitnet.bench.gpu)
#   2+ GPUs  short trainings on NCCL, each against the same job on gloo (CPU processes): final
#            parameters equal within round-off. columns, hybrid, pipeline, replicas
#   4+ GPUs  alexnet (halos at D=4) with and without partition.chunks=2; 8: replicas 2 x D=4
set -uo pipefail

OUT="${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
GPUS="${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}"
GPUS="${GPUS:-0}"
JOB=(data=synthetic data.num_classes=10 data.train_batches=6 data.val_batches=1 train.epochs=1
     batch_size=32 eval.batch_size=32 comm.timeout_s=300)
RESULTS="$OUT/checks.jsonl"
: > "$RESULTS"

# check NAME COMMAND...: run it, log its output, record ok/failed, never stop
check() {
    local name="$1"; shift
    local start=$SECONDS status
    echo "== $name"
    "$@" > "$OUT/$name.log" 2>&1
    status=$?
    tail -n 3 "$OUT/$name.log"
    python3 - "$name" "$status" "$((SECONDS - start))" "$OUT/$name.log" >> "$RESULTS" <<'PY'
import json, sys
name, status, seconds, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = [line for line in open(log, errors="replace").read().splitlines() if line.strip()]
print(json.dumps({"name": name, "ok": status == 0, "status": status, "seconds": seconds,
                  "last": lines[-1][-300:] if lines else ""}))
PY
}

# nccl_vs_gloo NAME D OVERRIDES...: the same short job on NCCL (D GPUs) and on gloo (CPU processes),
# final parameters compared
nccl_vs_gloo() {
    local name="$1" world="$2"; shift 2
    torchrun --standalone --nproc-per-node="$world" -m splitnet train launcher=torchrun comm.backend=nccl \
        "${JOB[@]}" "$@" train.run_dir="$OUT/$name-nccl" &&
    splitnet train "${JOB[@]}" "$@" train.run_dir="$OUT/$name-gloo" &&
    splitnet export ckpt="$OUT/$name-nccl" out="$OUT/$name-nccl.pt" &&
    splitnet export ckpt="$OUT/$name-gloo" out="$OUT/$name-gloo.pt" &&
    python3 - "$OUT/$name-nccl.pt" "$OUT/$name-gloo.pt" <<'PY'
import sys, torch
a, b = (torch.load(p, weights_only=True) for p in sys.argv[1:3])
worst = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)
print(f"NCCL vs gloo final parameters: largest relative difference {worst:.2e} (pass below 1e-3)")
sys.exit(0 if worst < 1e-3 else 1)
PY
}

environment() {
    nvidia-smi
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available',
torch.cuda.is_available(), 'devices', torch.cuda.device_count(),
'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None)"
}

check environment environment
check verify-nccl-rules splitnet verify comm.nccl_rules=true model=alexnet_small mesh.devices=3 partition.chunks=2

if [[ "$GPUS" -ge 1 ]]; then
    check d1-fp32-bf16-images-per-s python3 -m splitnet.bench.gpu alexnet_small 128 20
    check d1-train torchrun --standalone --nproc-per-node=1 -m splitnet train launcher=torchrun \
        comm.backend=nccl mesh.devices=1 "${JOB[@]}" train.run_dir="$OUT/d1"
fi
if [[ "$GPUS" -ge 2 ]]; then
    check columns-d2 nccl_vs_gloo columns-d2 2 partition=columns mesh.devices=2
    check hybrid-d2 nccl_vs_gloo hybrid-d2 2 partition=hybrid mesh.devices=2
    check pipeline-d2 nccl_vs_gloo pipeline-d2 2 partition=pipeline mesh.devices=2 partition.microbatches=4
    check replicas2-x-d1 nccl_vs_gloo replicas2-x-d1 2 partition=columns mesh.devices=1 mesh.replicas=2
fi
if [[ "$GPUS" -ge 4 ]]; then
    check replicas2-x-d2 nccl_vs_gloo replicas2-x-d2 4 partition=columns mesh.devices=2 mesh.replicas=2
    check alexnet-halos-d4 nccl_vs_gloo alexnet-halos-d4 4 model=alexnet partition=columns mesh.devices=4
    check alexnet-halos-d4-chunks2 nccl_vs_gloo alexnet-halos-d4-chunks2 4 model=alexnet partition=columns \
        mesh.devices=4 partition.chunks=2
fi
if [[ "$GPUS" -ge 8 ]]; then
    check alexnet-replicas2-x-d4 nccl_vs_gloo alexnet-replicas2-x-d4 8 model=alexnet partition=columns \
        mesh.devices=4 mesh.replicas=2 partition.chunks=2
fi

python3 - "$GPUS" "$RESULTS" <<'PY'
import json, sys
checks = [json.loads(line) for line in open(sys.argv[2])]
ok = all(c["ok"] for c in checks)
print(json.dumps({"gpus": int(sys.argv[1]), "ok": ok, "checks": checks}))
sys.exit(0 if ok else 1)
PY
