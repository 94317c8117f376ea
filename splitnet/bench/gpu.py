"""One-GPU figures: the reference and splitnet at D=1, float32 and bf16 autocast, beside the
GPU's dense-math peak measured in the same run (a large matmul), not looked up in a table.

    python -m splitnet.bench.gpu [model] [batch] [steps]     (bench/gpu.sh runs it)

Achieved TFLOP/s = images/s x 3 x the spec's forward FLOPs per sample (forward + two
backward matmuls). Not yet run on a GPU: no machine with one was at hand when it was
written. One process, one GPU: splitnet over several GPUs (NCCL) is bench/nccl.sh, which
starts ranks with ``launcher=torchrun``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F


def _timed(step: Callable[[int], None], steps: int, warmup: int) -> float:
    """Seconds per step, between two device synchronisations."""
    for k in range(warmup):
        step(k)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(k)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def matmul_peak(dtype: torch.dtype, n: int = 8192) -> float:
    """Dense TFLOP/s of an n x n x n matmul in ``dtype`` on this GPU."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    seconds = _timed(lambda _: torch.mm(a, b), 10, 3)
    return 2 * n**3 / seconds / 1e12


def gpu_rates(model: str, batch: int, steps: int) -> dict[str, Any]:
    from splitnet.bench.machine import machine
    from splitnet.bench.worker import SGD
    from splitnet.configs import model_config
    from splitnet.model.reference import build_reference
    from splitnet.model.spec import load_spec
    from splitnet.partition import Mesh, make_plan
    from splitnet.runtime import forward_backward, open_transport, setup_rank, sgd

    spec = load_spec(model_config(model))
    plan = make_plan(spec, {"strategy": "columns"}, Mesh(1), batch)
    rank_cfg = {"model": model_config(model), "plan": plan.to_dict(), "seed": 0, "comm": {"timeout_s": 300.0}}
    cuda = torch.device("cuda")
    x = torch.randn(batch, *spec.input_shape, device=cuda)
    y = torch.randint(0, spec.num_classes, (batch,), device=cuda)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        cast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dtype == torch.bfloat16 else nullcontext
        peak = matmul_peak(dtype)
        ref = build_reference(spec, 0).to(cuda).train()
        opt = sgd(ref.parameters(), SGD)

        def ref_step(k: int, ref: Any = ref, opt: Any = opt, cast: Any = cast) -> None:
            opt.zero_grad()
            with cast():
                loss = F.cross_entropy(ref(x), y)
            loss.backward()
            opt.step()

        me = setup_rank(rank_cfg, 0, optim=SGD, transport=open_transport(rank_cfg, 0, device=cuda))
        shard, sopt, transport = me.shard, me.optimizer, me.transport

        def split_step(k: int, shard: Any = shard, sopt: Any = sopt, cast: Any = cast,
                       transport: Any = transport) -> None:
            sopt.zero_grad()
            with cast():
                forward_backward(shard, x, y, transport, k)
            sopt.step()

        for name, step in (("reference", ref_step), ("splitnet D=1", split_step)):
            seconds = _timed(step, steps, 3)
            achieved = batch / seconds * 3 * spec.total_flops / 1e12
            rows.append({"name": f"{name} {str(dtype).removeprefix('torch.')}", "images_per_s": batch / seconds,
                         "tflops": achieved, "peak_tflops": peak, "share_of_peak": achieved / peak})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del ref, opt, me, shard, sopt
    return {"suite": "gpu", "rows": rows, "machine": machine() | {"gpu": torch.cuda.get_device_name(0)},
            "settings": {"model": model, "batch": batch, "steps": steps}}


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("splitnet.bench.gpu: no CUDA device here; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    model, batch, steps = (argv + ["alexnet", "128", "20"][len(argv):])[:3]
    print(json.dumps(gpu_rates(model, int(batch), int(steps))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
