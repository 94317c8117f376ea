"""The throughput suite: training images/s of every contender, alternating over rounds.

Each round runs every contender once, in the same order (reference first); contenders
that need the same number of processes share one launch. A contender's images/s is the
global batch times the timed steps over the slowest rank's time between two barriers;
its ratio is taken against the reference of the same round (``rounds.summarise``).
Beside it, images per CPU-second (all ranks' CPU time summed) and its own ratio: the
figure that survives a machine shared with other jobs.
"""

from __future__ import annotations

import sys
from typing import Any

from splitnet.bench.contenders import contenders, launches
from splitnet.bench.machine import machine
from splitnet.bench.rounds import summarise
from splitnet.bench.worker import bench_worker
from splitnet.launchers.simulate import launch
from splitnet.model.spec import load_spec


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The suite's knobs from the resolved config; ``bench.smoke`` shrinks everything to a check that it runs."""
    b = cfg["bench"]
    smoke = bool(b.get("smoke"))
    return {"batch": b["smoke_batch"] if smoke else cfg["batch_size"], "rounds": 1 if smoke else b["rounds"],
            "steps": 2 if smoke else b["steps"], "warmup": 0 if smoke else b["warmup"],
            "devices": cfg["mesh"]["devices"], "replicas": b["replicas"],
            "microbatches": cfg["partition"].get("microbatches") or 4, "contenders": b["contenders"],
            "chunks": b.get("chunks", 2), "timeout_s": cfg["comm"]["timeout_s"], "smoke": smoke}


def measure(cfg: dict[str, Any], s: dict[str, Any]) -> tuple[list[Any], list[dict[str, dict[str, Any]]]]:
    """Run the rounds; returns the contenders and, per round, name -> measured figures."""
    spec = load_spec(cfg["model"])
    order = contenders(spec, s["batch"], s["devices"], s["replicas"], s["microbatches"], s["contenders"],
                       s["chunks"])
    rounds = []
    for r in range(s["rounds"]):
        print(f"round {r + 1}/{s['rounds']}: {spec.name}, batch {s['batch']}, {s['steps']} timed steps "
              f"after {s['warmup']} warm-up", file=sys.stderr, flush=True)
        measured: dict[str, dict[str, Any]] = {}
        for group in launches(order):
            job = {"model": cfg["model"], "batch": s["batch"], "steps": s["steps"], "warmup": s["warmup"],
                   "timeout_s": s["timeout_s"], "progress": True, "contenders": [c.to_dict() for c in group]}
            per_rank = launch(bench_worker, group[0].world, job, timeout_s=s["timeout_s"])
            for i, c in enumerate(group):
                ranks = [results[i] for results in per_rank]
                seconds = max(x["seconds"] for x in ranks)
                measured[c.name] = {
                    "images_per_s": s["batch"] * s["steps"] / seconds, "step_s": seconds / s["steps"],
                    "cpu_s": sum(x["cpu_s"] for x in ranks),
                    "images_per_cpu_s": s["batch"] / sum(x["cpu_s"] for x in ranks),
                    "exchange_s": _max(x["exchange_s"] for x in ranks),
                    "blocked_s": _max(x["blocked_s"] for x in ranks),
                    "unblocked_exchange_s": _max(x["exchange_s"] - x["blocked_s"] for x in ranks
                                            if x["exchange_s"] is not None),
                    "bytes_per_step": max(x["bytes_per_step"] for x in ranks), "key": c.key, "world": c.world,
                    "planned_bytes_per_step": _planned(c.plan)}
        rounds.append(measured)
    return order, rounds


def _max(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _planned(plan_dict: dict[str, Any] | None) -> float | None:
    """The most bytes any rank of the plan receives per step, as the cost model predicts."""
    if plan_dict is None:
        return None
    from splitnet.partition.plan import Plan

    plan = Plan.from_dict(plan_dict)
    return float(max(sum(f + b for f, b in plan.expected(r).values()) for r in range(plan.devices)))


def run_throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    s = settings(cfg)
    before = machine()
    order, rounds = measure(cfg, s)
    rows = summarise(rounds, order[0].name)
    spec = load_spec(cfg["model"])
    return {"suite": "throughput", "rows": rows, "machine": before | {"load_avg_after": machine()["load_avg"]},
            "settings": s | {"model": spec.name}, "rounds": rounds,
            "title": f"{spec.name}, batch {s['batch']}: training images/s against the one-process reference"}
