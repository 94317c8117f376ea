"""Who runs in a throughput round: the same network and the same global batch for everyone.

- ``reference``: the whole network in one process using every core (the baseline);
- ``ddp``: PyTorch DistributedDataParallel over D processes, each a whole grouped
  network on B/D samples (what a user would otherwise run);
- ``gpipe`` / ``1f1b``: ``torch.distributed.pipelining`` schedules on the stage split and
  micro-batch count of splitnet's own pipeline plan;
- splitnet: ``columns_gather`` (the 2012 exchanges), ``columns_auto``, ``columns_chunked``
  (auto, the batch in ``chunks`` chunks whose exchanges overlap compute), ``pipeline``
  (GPipe order), ``pipeline_1f1b`` (the same plan in 1F1B order), ``hybrid``, ``replicas``
  (R x 1 device) and ``replicas_columns`` (R x D columns); replicas take B/R samples each,
  so the global batch stays B.

Pure: reads a spec and a config, makes plans, starts nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.model.spec import ModelSpec
from splitnet.partition import Mesh, make_plan

KINDS = ("reference", "ddp", "gpipe", "1f1b", "columns_gather", "columns_auto", "columns_chunked", "pipeline",
         "pipeline_1f1b",
         "hybrid", "replicas", "replicas_columns")


@dataclass(frozen=True)
class Contender:
    key: str                  # one of KINDS
    name: str                 # as the tables print it
    world: int                # processes
    plan: dict[str, Any] | None = None        # splitnet contenders: the plan they run
    stages: list[list[str]] = field(default_factory=list)  # torch pipelining: layer names per stage
    microbatches: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_layers(plan_dict: dict[str, Any]) -> list[list[str]]:
    """The layer names each stage of a pipeline plan computes (pseudo-layers left out)."""
    from splitnet.partition.plan import PSEUDO, Plan

    plan = Plan.from_dict(plan_dict)
    return [[p.name for p in plan.layers if p.op not in PSEUDO and p.shard(s) is not None]
            for s in range(plan.devices)]


def contenders(spec: ModelSpec, batch: int, devices: int, replicas: int, microbatches: int,
               keys: list[str] | str = "all", chunks: int = 2) -> list[Contender]:
    """The contenders ``keys`` names (``all``: every one), in the order a round runs them."""
    wanted = list(KINDS) if keys == "all" else list(keys)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise SplitnetError(f"bench.contenders: unknown {unknown}; choose from {list(KINDS)} or 'all'")
    for key, parts in (("batch_size", devices), ("batch_size", replicas),
                       ("batch_size", microbatches * devices)):
        if batch % parts:
            raise SplitnetError(f"{key}={batch} does not split into {parts} equal parts (mesh.devices="
                                f"{devices}, bench.replicas={replicas}, partition.microbatches={microbatches}); "
                                f"use a multiple of {replicas * microbatches * devices}")

    def plan(partition: dict[str, Any], mesh: Mesh, rows: int) -> dict[str, Any]:
        return make_plan(spec, partition, mesh, rows).to_dict()

    d, r, m = devices, replicas, microbatches
    pipe = plan({"strategy": "pipeline", "microbatches": m}, Mesh(d), batch)
    pipe_1f1b = plan({"strategy": "pipeline", "microbatches": m, "schedule": "1f1b"}, Mesh(d), batch)
    made = {
        "reference": Contender("reference", "reference (1 process)", 1),
        "ddp": Contender("ddp", f"torch DDP x{d}", d),
        "gpipe": Contender("gpipe", f"torch GPipe D={d} M={m}", d, stages=stage_layers(pipe), microbatches=m),
        "1f1b": Contender("1f1b", f"torch 1F1B D={d} M={m}", d, stages=stage_layers(pipe), microbatches=m),
        "columns_gather": Contender("columns_gather", f"columns D={d} (gather)", d,
                                    plan({"strategy": "columns", "exchange": "gather"}, Mesh(d), batch)),
        "columns_auto": Contender("columns_auto", f"columns D={d} (auto)", d,
                                  plan({"strategy": "columns", "exchange": "auto"}, Mesh(d), batch)),
        "columns_chunked": Contender("columns_chunked", f"columns D={d} (auto, {chunks} chunks)", d,
                                     plan({"strategy": "columns", "exchange": "auto", "chunks": chunks},
                                          Mesh(d), batch)),
        "pipeline": Contender("pipeline", f"pipeline D={d} M={m}", d, pipe),
        "pipeline_1f1b": Contender("pipeline_1f1b", f"pipeline 1F1B D={d} M={m}", d, pipe_1f1b),
        "hybrid": Contender("hybrid", f"hybrid D={d}", d,
                            plan({"strategy": "hybrid", "exchange": "auto"}, Mesh(d), batch)),
        "replicas": Contender("replicas", f"replicas {r} x D=1", r,
                              plan({"strategy": "columns"}, Mesh(1, r), batch // r)),
        "replicas_columns": Contender("replicas_columns", f"replicas {r} x columns D={d}", r * d,
                                      plan({"strategy": "columns", "exchange": "auto"}, Mesh(d, r), batch // r)),
    }
    return [made["reference"]] + [made[k] for k in KINDS if k in wanted and k != "reference"]


def launches(order: list[Contender]) -> list[list[Contender]]:
    """Consecutive contenders with the same process count share one launch (one process start)."""
    out: list[list[Contender]] = []
    for c in order:
        if out and out[-1][0].world == c.world:
            out[-1].append(c)
        else:
            out.append([c])
    return out
