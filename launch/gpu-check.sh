#!/usr/bin/env bash
# The CUDA/NCCL path on a machine with NVIDIA GPUs, for whatever the GPU count allows:
#   launch/gpu-check.sh 2>&1 | tee gpu-check.txt
# Always: the environment, and `splitnet verify` (the split against the reference; its ranks
# are CPU processes). 1 GPU: a short D=1 training on cuda:0 under torchrun (NCCL) and the
# reference's images/s on the same GPU. 2+ GPUs: a short NCCL D=2 training, the same job on
# CPU with gloo, and their final parameters compared (equal within float32 round-off).
set -euo pipefail

OUT="${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}"
JOB=(data=synthetic data.num_classes=10 data.train_batches=20 data.val_batches=2 train.epochs=1
     batch_size=128 eval.batch_size=100)
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)

nvidia-smi || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available',
torch.cuda.is_available(), 'devices', torch.cuda.device_count(),
'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None)"
[[ "$GPUS" -ge 1 ]] || { echo "gpu-check: no NVIDIA GPU visible" >&2; exit 1; }

echo "== splitnet verify (columns, D=2)"
splitnet verify partition=columns mesh.devices=2

if [[ "$GPUS" -eq 1 ]]; then
    echo "== D=1 on cuda:0 (NCCL), alexnet_small"
    torchrun --standalone --nproc-per-node=1 -m splitnet train launcher=torchrun comm.backend=nccl \
        mesh.devices=1 "${JOB[@]}" train.run_dir="$OUT/d1-cuda"
    echo "== the reference on cuda:0: images/s at batch 128"
    python - <<'PY'
import time, torch, yaml
from splitnet.cli import CONF_DIR
from splitnet.model.reference import build_reference
from splitnet.model.spec import load_spec
spec = load_spec(yaml.safe_load((CONF_DIR / "model" / "alexnet_small.yaml").read_text()))
model = build_reference(spec).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(128, spec.input_channels, spec.input_size, spec.input_size, device="cuda")
y = torch.randint(0, spec.num_classes, (128,), device="cuda")
for i in range(60):
    if i == 10:
        torch.cuda.synchronize(); t0 = time.perf_counter()
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
torch.cuda.synchronize()
print(f"reference on {torch.cuda.get_device_name(0)}: {50 * 128 / (time.perf_counter() - t0):.0f} images/s")
PY
    grep '"images_per_s"' "$OUT/d1-cuda/metrics.jsonl" | tail -n 5
    exit 0
fi

echo "== D=2 on cuda:0,1 (NCCL)"
torchrun --standalone --nproc-per-node=2 -m splitnet train launcher=torchrun comm.backend=nccl \
    "${JOB[@]}" train.run_dir="$OUT/d2-nccl"
echo "== the same job on CPU (gloo)"
splitnet train "${JOB[@]}" train.run_dir="$OUT/d2-gloo"
splitnet export ckpt="$OUT/d2-nccl" out="$OUT/nccl.pt"
splitnet export ckpt="$OUT/d2-gloo" out="$OUT/gloo.pt"
python - "$OUT/nccl.pt" "$OUT/gloo.pt" <<'PY'
import sys, torch
a, b = (torch.load(p, weights_only=True) for p in sys.argv[1:3])
worst = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)
print(f"NCCL vs gloo final parameters: largest relative difference {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
PY
grep '"images_per_s"' "$OUT/d2-nccl/metrics.jsonl" | tail -n 5
