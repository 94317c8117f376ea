"""Training-step throughput of each strategy against the single-device reference.

    python bench/bench_strategies.py [--model alexnet_small] [--batch 128] [--steps 8] [--out bench.png]

Every row trains the same model on the same synthetic batches: the reference on one
process (the "1 device" baseline), then each plan on simulated CPU devices (one
process per device, gloo on loopback, the machine's cores shared among them). It
reports images/s and the ratio to the baseline measured in this same run, plus the
bytes each device received per step (from the meter), and draws a bar chart.
On one CPU the devices share the same cores, so a ratio below 1 measures the cost of
splitting (exchanges, smaller kernels), not what separate GPUs would gain.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from splitnet.cli import CONF_DIR
from splitnet.launchers.simulate import launch
from splitnet.partition import Mesh, make_plan
from splitnet.partition.plan import Plan
from splitnet.spec import ModelSpec, load_spec
from splitnet.verify import verify_batch


def reference_rate(spec: ModelSpec, batch: int, steps: int, warmup: int) -> float:
    from splitnet.layers import set_step
    from splitnet.reference import build_reference

    torch.set_num_threads(os.cpu_count() or 1)
    model = build_reference(spec, 0).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = 0.0
    for k in range(warmup + steps):
        if k == warmup:
            start = time.perf_counter()
        x, y = verify_batch(spec, 0, k, batch)
        set_step(model, k, 0, batch)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def split_job(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, float]:
    from splitnet.comm import Transport
    from splitnet.runtime import build_shard, forward_backward

    spec, plan = load_spec(cfg["model"]), Plan.from_dict(cfg["plan"])
    transport = Transport(plan, rank, timeout_s=120)
    shard = build_shard(spec, plan, rank, transport=transport)
    opt = torch.optim.SGD(shard.parameters(), lr=0.01, momentum=0.9)
    start, batch = 0.0, plan.batch_size
    for k in range(cfg["warmup"] + cfg["steps"]):
        if k == cfg["warmup"]:
            transport.barrier("bench")
            start = time.perf_counter()
            transport.meter.reset()
        x, y = verify_batch(spec, 0, k, batch * plan.replicas)
        rows = slice(transport.replica * batch, (transport.replica + 1) * batch)
        opt.zero_grad()
        forward_backward(shard, x[rows], y[rows], transport, k)
        opt.step()
    transport.barrier("bench")
    seconds = time.perf_counter() - start
    return {"images_per_s": batch * plan.replicas * cfg["steps"] / seconds,
            "bytes_per_step": float(transport.meter.total()) / cfg["steps"]}


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="alexnet_small")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="bench_strategies.png")
    args = parser.parse_args()
    raw = yaml.safe_load((CONF_DIR / "model" / f"{args.model}.yaml").read_text())
    spec = load_spec(raw)
    configs = [
        ("columns D=2 (gather, 2012)", {"strategy": "columns", "exchange": "gather"}, Mesh(2)),
        ("columns D=2 (auto)", {"strategy": "columns", "exchange": "auto"}, Mesh(2)),
        ("hybrid D=2", {"strategy": "hybrid", "exchange": "auto"}, Mesh(2)),
        ("pipeline D=2 M=4", {"strategy": "pipeline", "microbatches": 4}, Mesh(2)),
        ("replicas 2 x D=1", {"strategy": "columns"}, Mesh(1, 2)),
    ]
    base = reference_rate(spec, args.batch, args.steps, args.warmup)
    rows = [("reference (1 device)", base, 1.0, 0.0)]
    print(f"{'configuration':28s} {'images/s':>9s} {'vs 1 device':>11s} {'bytes in/step/device':>20s}")
    print(f"{rows[0][0]:28s} {base:9.1f} {1.0:11.2f} {0:20,.0f}", flush=True)
    for name, partition, mesh in configs:
        plan = make_plan(spec, partition, mesh, args.batch)
        results = launch(split_job, mesh.world_size, {"model": raw, "plan": plan.to_dict(),
                                                      "steps": args.steps, "warmup": args.warmup})
        rate = min(r["images_per_s"] for r in results)
        moved = max(r["bytes_per_step"] for r in results)
        rows.append((name, rate, rate / base, moved))
        print(f"{name:28s} {rate:9.1f} {rate / base:11.2f} {moved:20,.0f}", flush=True)
    draw(rows, args.out, f"{spec.name}, batch {args.batch}, {os.cpu_count()} CPU cores shared by all devices")


def draw(rows: list[tuple[str, float, float, float]], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    names = [r[0] for r in rows][::-1]
    ratios = [r[2] for r in rows][::-1]
    ax.barh(names, ratios, color=["#888888" if n.startswith("reference") else "#1f77b4" for n in names])
    for i, value in enumerate(ratios):
        ax.text(value, i, f" {value:.2f}x", va="center")
    ax.axvline(1.0, color="#444444", lw=0.8)
    ax.set_xlabel("training throughput relative to the single-device reference (same run)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
