"""A rank, assembled in one place: spec -> plan -> transport -> shard -> optimizer.

``setup_rank(cfg, rank)`` is what train, verify, profile and bench call inside a worker
function, after the launcher has joined the process group. It reads ``cfg["model"]``
(the spec), ``cfg["plan"]`` (a ``Plan.to_dict()``), ``cfg["seed"]`` (the shard's
initial weights) and ``cfg["comm"]`` (``timeout_s``; ``nccl_rules`` and ``max_communicators``
where set); the optimizer is ``sgd``, SGD with
momentum from ``optim``, which the single-device runs a split is compared with (verify's
reference, bench's contenders) build too. Every caller goes through here, so no two
copies of this sequence can drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from splitnet.comm.transport import Transport
from splitnet.model.spec import ModelSpec, load_spec
from splitnet.partition.plan import Plan
from splitnet.runtime.shard import ShardNet, build_shard


@dataclass
class Rank:
    """One rank's pieces: what it computes (``shard``), how it talks (``transport``), how it learns."""

    spec: ModelSpec
    plan: Plan
    transport: Transport
    shard: ShardNet
    optimizer: torch.optim.Optimizer


def open_transport(cfg: Mapping[str, Any], rank: int, *, kind: type[Transport] = Transport,
                   device: torch.device | None = None) -> Transport:
    """This rank's transport for ``cfg["plan"]``: its process groups, on ``device`` (default:
    the one the launcher selected). ``kind`` is a Transport subclass (the benchmarks' clocked one)."""
    comm = cfg["comm"]
    return kind(Plan.from_dict(cfg["plan"]), rank, device=device, timeout_s=comm["timeout_s"],
                nccl_rules=comm.get("nccl_rules", False), max_communicators=comm.get("max_communicators", 16))


def setup_rank(cfg: Mapping[str, Any], rank: int, *, optim: Mapping[str, Any],
               transport: Transport | None = None) -> Rank:
    """Global rank ``rank`` of ``cfg["plan"]``, ready to step. ``transport`` is one already
    opened with ``open_transport`` (profile opens it before its trace starts), else a new one."""
    spec = load_spec(cfg["model"])
    plan = Plan.from_dict(cfg["plan"])
    transport = transport if transport is not None else open_transport(cfg, rank)
    shard = build_shard(spec, plan, rank, seed=cfg["seed"], transport=transport)
    return Rank(spec, plan, transport, shard, sgd(shard.parameters(), optim))


def sgd(params: Iterable[torch.nn.Parameter], optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD with momentum, ``lr``, ``momentum`` and ``weight_decay`` (default 0) from ``optim``:
    every rank's optimizer, and the one the single-device runs it is compared with use."""
    return torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"],
                           weight_decay=optim.get("weight_decay", 0.0))
