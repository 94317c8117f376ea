"""How a restarted training job continues: from its run folder's latest complete checkpoint.

torchrun (``--max-restarts``) and Ray (``launcher.max_failures``) restart every rank of a
job after one fails, with the config the ``restart`` function they are handed returns:
for training, ``resumed``. The new ranks run the same config with ``train.resume=auto``
once the run folder holds a complete checkpoint, so they continue where the job last
saved, and no flag is needed. Before the first checkpoint a restart starts the way the
job first started (fresh, or from the checkpoint ``train.resume`` named).

A launcher that places its own ranks (Ray, ``launcher.min_replicas``) may restart on
another number of replicas: it sets ``mesh.replicas`` to the replicas it placed, and
``resumed`` plans the job again for them, checked as at the first start, with the global
batch the job trained with (a checkpoint records it; before the first one it is pinned
in ``train.global_batch``). torchrun's ranks plan for themselves at every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitnet.partition.plan import Plan
from splitnet.train.checkpoint import complete_checkpoints, find_checkpoint, read_meta
from splitnet.train.global_batch import global_batch, recorded_global_batch
from splitnet.train.preflight import preflight


def resumed(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` for a restarted attempt (``cfg["run_dir"]`` is the job's run folder,
    ``cfg["plan"]`` the last attempt's plan, ``cfg["mesh"]["replicas"]`` this one's replicas)."""
    run_dir = Path(cfg["run_dir"])
    saved = bool(complete_checkpoints(run_dir / "checkpoints"))
    out = {**cfg, "train": {**cfg["train"], "resume": "auto"}} if saved else cfg
    if cfg["mesh"]["replicas"] == cfg["plan"]["mesh"]["replicas"]:
        return out
    if not saved:
        out = {**out, "train": {**out["train"], "global_batch": _trained_global_batch(cfg)}}
    return {**out, "plan": preflight(out, run_dir).plan.to_dict()}


def _trained_global_batch(cfg: dict[str, Any]) -> int:
    """The global batch of the attempt that ran ``cfg``, by the rule its workers followed."""
    plan = Plan.from_dict(cfg["plan"])
    resume = cfg["train"].get("resume")
    named = resume and resume != "auto"  # "auto" without a checkpoint was a fresh start
    recorded = recorded_global_batch(read_meta(find_checkpoint(resume))) if named else None
    return global_batch(cfg["train"], plan.batch_size, plan.replicas, recorded, str(resume))[0]
