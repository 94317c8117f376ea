"""The partitioner: a spec and a device mesh in, a Plan out. Pure: no processes, no torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from splitnet.model.spec import ModelSpec
from splitnet.partition.columns import columns
from splitnet.partition.cost import device_costs, with_bytes_in
from splitnet.partition.errors import PartitionError
from splitnet.partition.hybrid import hybrid
from splitnet.partition.mesh import Mesh, MeshError, parse_bytes, replicas_for_world
from splitnet.partition.pipeline import pipeline
from splitnet.partition.plan import PSEUDO, Exchange, Placement, Plan, Shard, in_chunks, ring_bytes

STRATEGIES = ("columns", "pipeline", "hybrid", "auto")
# A pipeline's micro-batch order: gpipe runs every forward, then every backward; 1f1b
# alternates after a warm-up, so stage s holds at most min(M, D - s) micro-batches.
SCHEDULES = ("gpipe", "1f1b")
_KEYS = {"strategy", "exchange", "balance", "boundaries", "microbatches", "schedule", "chunks"}

__all__ = ["Mesh", "MeshError", "replicas_for_world", "PartitionError", "Plan", "Placement", "Shard", "Exchange",
           "make_plan", "parse_bytes", "STRATEGIES", "SCHEDULES"]


def _rationale(plan_rows: list[Placement], strategy: str, devices: int, cfg: Mapping[str, Any],
               share: tuple[float, ...]) -> str:
    talk = [p.name for p in plan_rows if p.exchange is not None]
    where = ", ".join(talk)
    talks = f"devices talk only at {where}" if talk else "no device talks to another"
    if strategy == "columns":
        even = all(len({s.out[1] - s.out[0] for s in p.shards}) <= 1 for p in plan_rows)
        share = f"1/{devices}" if even else f"about 1/{devices} (shards differ by at most a channel)"
        chunks = int(cfg.get("chunks", 1))
        chunked = in_chunks(plan_rows)
        whole = [p.name for p in plan_rows if p.op not in PSEUDO and p.name not in chunked]
        overlap = (f"; the batch runs in {chunks} chunks" + (f" up to {whole[0]}" if whole else "")
                   + ", one chunk's exchanges overlapping the next one's compute") if chunks > 1 else ""
        return (f"columns: each of {devices} device(s) holds {share} of every weighted layer's "
                f"channels, along the towers; {talks}{overlap}")
    if strategy == "pipeline":
        m = int(cfg.get("microbatches", 1))
        bubble = (devices - 1) / (m + devices - 1)
        order = ("1F1B schedule: stage s holds at most min(M, D-s) micro-batches"
                 if cfg.get("schedule", "gpipe") == "1f1b" else "GPipe schedule: every forward, then every backward")
        return (f"pipeline: {devices} stages of whole layers (shares of {cfg.get('balance', 'flops')}: "
                f"{', '.join(f'{s:.0%}' for s in share)}), {m} micro-batch(es), idle fraction "
                f"(D-1)/(M+D-1) = {bubble:.0%}, {order}; {talks}")
    return (f"hybrid: conv layers replicated, each of {devices} device(s) takes 1/{devices} of the "
            f"batch; fully-connected layers sharded by columns; {talks}")


# Each chunk talks on its own copy of the process groups and point-to-point tags
MAX_CHUNKS = 64


def _chunks(cfg: Mapping[str, Any], batch: int) -> int:
    chunks = cfg.get("chunks", 1)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or not 1 <= chunks <= min(batch, MAX_CHUNKS):
        raise PartitionError(f"partition.chunks={chunks!r} must be an integer from 1 to "
                             f"min(batch_size={batch}, {MAX_CHUNKS})")
    return chunks


def _build(spec: ModelSpec, strategy: str, cfg: Mapping[str, Any], mesh: Mesh, batch: int,
           dtype_bytes: int) -> Plan:
    d = mesh.devices
    share: tuple[float, ...] = ()
    microbatches = 1
    schedule = str(cfg.get("schedule", "gpipe"))
    if schedule not in SCHEDULES:
        raise PartitionError(f"{strategy}: partition.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}")
    if schedule != "gpipe" and strategy != "pipeline":
        raise PartitionError(f"{strategy}: partition.schedule={schedule!r} orders a pipeline's micro-batches; "
                             "use partition=pipeline, or leave partition.schedule out")
    chunks = _chunks(cfg, batch)
    if chunks > 1 and strategy != "columns":
        raise PartitionError(f"{strategy}: partition.chunks={chunks} overlaps a columns plan's exchanges "
                             "with compute; use partition=columns, or leave partition.chunks out "
                             "(a pipeline has partition.microbatches)")
    if strategy == "columns":
        rows = columns(spec, d, str(cfg.get("exchange", "auto")), batch, dtype_bytes)
    elif strategy == "pipeline":
        microbatches = cfg.get("microbatches", 1)
        if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1 \
                or batch % microbatches:
            raise PartitionError(f"pipeline: partition.microbatches={microbatches} must be >= 1 and "
                                 f"divide batch_size={batch}")
        rows, share = pipeline(spec, d, str(cfg.get("balance", "flops")), cfg.get("boundaries"),
                               batch, dtype_bytes)
    elif strategy == "hybrid":
        rows = hybrid(spec, d, str(cfg.get("exchange", "auto")), batch, dtype_bytes)
    else:
        raise PartitionError(f"partition.strategy={strategy!r}; valid: {', '.join(STRATEGIES)}")
    costs = device_costs(spec, rows, d, batch, dtype_bytes, microbatches, schedule, chunks)
    idle = [c.rank for c in costs if c.param_count == 0]
    if idle:  # its optimizer would hold nothing, and SGD refuses an empty parameter list
        raise PartitionError(f"{strategy}: mesh.devices={d} leaves rank(s) {idle} without a parameter to "
                             "train; use fewer mesh.devices or another partition")
    if mesh.replicas > 1:
        r = mesh.replicas
        per_rank = tuple((c.rank, ring_bytes("none", 0, r), ring_bytes("all_reduce", c.param_bytes, r))
                         for c in costs)
        rows.append(Placement("replicas", "replicas", (), Exchange(
            "grads", "none", "all_reduce", (), per_rank[0][1], max(p[2] for p in per_rank), per_rank)))
    costs = with_bytes_in(costs, rows)
    return Plan(spec.name, strategy, d, mesh.replicas, batch, microbatches, dtype_bytes, tuple(rows),
                tuple(costs), _rationale(rows, strategy, d, cfg, share), share, spec.total_params,
                schedule=schedule, chunks=chunks)


def make_plan(spec: ModelSpec, partition: Mapping[str, Any], mesh: Mesh, batch_size: int,
              dtype_bytes: int = 4) -> Plan:
    """Partition ``spec`` over ``mesh``; ``partition`` is the ``partition`` config group."""
    unknown = sorted(set(partition) - _KEYS)
    if unknown:
        raise PartitionError(f"partition: unknown key(s) {unknown}; valid keys: {sorted(_KEYS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PartitionError(f"batch_size={batch_size!r} must be an integer >= 1")
    if isinstance(dtype_bytes, bool) or dtype_bytes not in (1, 2, 4, 8):
        raise PartitionError(f"dtype_bytes={dtype_bytes!r}; valid: 1, 2, 4 (float32) or 8")
    strategy = str(partition.get("strategy", "columns"))
    _chunks(partition, batch_size)
    if strategy == "auto":
        from splitnet.partition.auto import choose

        return choose(spec, partition, mesh, batch_size, dtype_bytes, _build)
    plan = _build(spec, strategy, partition, mesh, batch_size, dtype_bytes)
    if mesh.device_memory is not None:
        _check_memory(spec, plan, partition, mesh)
    return plan


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _check_memory(spec: ModelSpec, plan: Plan, partition: Mapping[str, Any], mesh: Mesh) -> None:
    """Refuse a plan whose predicted peak overflows ``mesh.device_memory`` on some rank, naming
    every rank's figure and the smallest device count of the same strategy that fits."""
    cap = mesh.device_memory
    assert cap is not None
    if all(c.memory_bytes <= cap for c in plan.costs):
        return
    per_rank = ", ".join(f"rank {c.rank} {_mib(c.memory_bytes)}" for c in plan.costs)
    fits = None
    for devices in range(plan.devices + 1, 129):
        try:
            bigger = _build(spec, plan.strategy, partition, Mesh(devices, mesh.replicas), plan.batch_size,
                            plan.dtype_bytes)
        except PartitionError:
            continue
        worst = max(c.memory_bytes for c in bigger.costs)
        if worst <= cap:
            fits = f"the smallest mesh that fits is mesh.devices={devices} ({_mib(worst)} per device)"
            break
    raise PartitionError(
        f"{plan.strategy}: the predicted peak per device ({per_rank}) exceeds mesh.device_memory={cap:,} "
        f"bytes ({_mib(cap)}); {fits or 'no device count up to 128 fits'}; or use a smaller batch_size or "
        "partition=auto")
