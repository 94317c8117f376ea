"""``auto``: estimate every candidate's step time, keep those that fit, pick the fastest.

Step time = compute + communication, no overlap assumed:
compute = (largest per-device FLOPs) / mesh.device_tflops, times (M+D-1)/M for a
pipeline of M micro-batches (the fill-drain bubble); communication = (largest
per-device bytes in) * 8 / mesh.link_gbps. A candidate fits when its largest
per-device memory (parameters, gradients, momentum, activations) is at most
mesh.device_memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from splitnet.model.spec import ModelSpec
from splitnet.partition.errors import PartitionError
from splitnet.partition.mesh import Mesh
from splitnet.partition.plan import Plan


def estimate(plan: Plan, mesh: Mesh) -> dict[str, float]:
    compute = max(c.flops for c in plan.costs) / (mesh.device_tflops * 1e12)
    if plan.strategy == "pipeline":
        compute *= (plan.microbatches + plan.devices - 1) / plan.microbatches
    comm = max(c.bytes_in for c in plan.costs) * 8 / (mesh.link_gbps * 1e9)
    return {"compute_s": compute, "comm_s": comm, "step_s": compute + comm,
            "memory_bytes": max(c.memory_bytes for c in plan.costs)}


def candidates(partition: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    m = partition.get("microbatches", 4)
    exchange = partition.get("exchange", "auto")
    modes = [exchange] if exchange != "auto" else ["auto", "gather"]
    chunks = {"chunks": partition["chunks"]} if "chunks" in partition else {}
    return [
        *[("columns", {"exchange": mode, **chunks}) for mode in modes],
        ("hybrid", {"exchange": exchange}),
        ("pipeline", {"balance": "flops", "microbatches": m}),
        ("pipeline", {"balance": "params", "microbatches": m}),
    ]


def choose(spec: ModelSpec, partition: Mapping[str, Any], mesh: Mesh, batch: int, dtype_bytes: int,
           build: Callable[..., Plan]) -> Plan:
    table: list[dict[str, Any]] = []
    best: tuple[float, Plan, dict[str, Any]] | None = None
    smallest: tuple[int, str] | None = None
    for strategy, options in candidates(partition):
        row: dict[str, Any] = {"strategy": strategy, "options": options}
        try:
            plan = build(spec, strategy, options, mesh, batch, dtype_bytes)
        except PartitionError as exc:
            row["error"] = str(exc)
            table.append(row)
            continue
        est = estimate(plan, mesh)
        fits = mesh.device_memory is None or est["memory_bytes"] <= mesh.device_memory
        row.update(est, fits=fits)
        table.append(row)
        if smallest is None or est["memory_bytes"] < smallest[0]:
            smallest = (int(est["memory_bytes"]), f"{strategy} {options}")
        if fits and (best is None or est["step_s"] < best[0]):
            best = (est["step_s"], plan, row)
    if best is None:
        if smallest is None:
            raise PartitionError("auto: no strategy can split this model: "
                                 + "; ".join(r["error"] for r in table))
        over = smallest[0] - (mesh.device_memory or 0)
        raise PartitionError(f"auto: nothing fits mesh.device_memory={mesh.device_memory:,} bytes; the "
                             f"smallest candidate ({smallest[1]}) needs {smallest[0]:,} bytes per device, "
                             f"{over:,} bytes ({over / (mesh.device_memory or 1):.0%}) too many")
    _, plan, row = best
    for r in table:
        r["chosen"] = r is row
    why = (f"auto chose {plan.strategy} {row['options']}: estimated {row['step_s'] * 1e3:.2f} ms/step, "
           f"the fastest of {sum(1 for r in table if r.get('fits'))} candidates that fit. "
           + plan.rationale)
    if partition.get("chunks", 1) != 1 and plan.strategy != "columns":
        why += f"; partition.chunks={partition['chunks']} applies to columns only, so this plan runs the batch whole"
    return replace(plan, rationale=why, candidates=tuple(table))
