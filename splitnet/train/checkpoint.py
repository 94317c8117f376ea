"""Sharded, atomic checkpoints.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` in the run folder: one
``rank<r>.pt`` per model-parallel rank (replicas hold identical shards, so replica 0's
ranks write), and ``meta.json`` with the plan, the resolved config, the step, the data
position and the schedule. Everything is written into ``step_XXXXXXXX.partial/``, each
file fsynced, and the folder is renamed into place by rank 0 only after every rank has
written: a checkpoint that was killed half-way never has the final name, and resume
never sees it. Shard files hold tensors and plain containers only and are loaded with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from splitnet.atomic import fsync_dir, write_atomic
from splitnet.errors import SplitnetError
from splitnet.partition.plan import Plan
from splitnet.runtime.state import merge_state, split_state

FORMAT = 1


class CheckpointError(SplitnetError, RuntimeError):
    pass


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def write_shard(root: Path, step: int, mp_rank: int, payload: Mapping[str, Any]) -> None:
    partial = root / (step_name(step) + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    write_atomic(partial / f"rank{mp_rank}.pt", lambda p: torch.save(dict(payload), p))


def publish(root: Path, step: int, meta: Mapping[str, Any], keep: int) -> Path:
    """Rank 0, after every rank's ``write_shard``: write meta.json and rename into place."""
    partial = root / (step_name(step) + ".partial")
    final = root / step_name(step)
    write_atomic(partial / "meta.json", lambda p: p.write_text(json.dumps({**meta, "format": FORMAT})))
    fsync_dir(partial)
    aside = root / (step_name(step) + ".replaced")
    if final.exists():  # the same step again (an epoch end on a checkpoint_every step): newer wins
        os.rename(final, aside)
    os.rename(partial, final)
    fsync_dir(root)
    shutil.rmtree(aside, ignore_errors=True)
    done = complete_checkpoints(root)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.partial"):  # left by a run killed while writing
        if stale.name < step_name(step):
            shutil.rmtree(stale, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (``.partial`` folders are not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and "." not in p.name
             and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(where: str | Path) -> Path:
    """A checkpoint folder, or the latest complete one in a run folder or its checkpoints/."""
    path = Path(where)
    if (path / "meta.json").is_file():
        return path
    for root in (path / "checkpoints", path):
        done = complete_checkpoints(root)
        if done:
            return done[-1]
    raise CheckpointError(f"no complete checkpoint in {path} (looked for step_*/meta.json there and in "
                          f"{path / 'checkpoints'})")


def read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt}: meta.json is unreadable or corrupt ({exc})") from exc
    if meta.get("format") != FORMAT or "plan" not in meta or "config" not in meta:
        raise CheckpointError(f"checkpoint {ckpt}: meta.json is not a splitnet checkpoint of format {FORMAT}")
    return meta


def read_shard(ckpt: Path, mp_rank: int) -> dict[str, Any]:
    path = ckpt / f"rank{mp_rank}.pt"
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {ckpt}: shard file {path.name} is missing") from exc
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {ckpt}: shard file {path.name} is corrupt or not a "
                              f"splitnet shard ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload or "momentum" not in payload:
        raise CheckpointError(f"checkpoint {ckpt}: {path.name} does not hold model and momentum state")
    return payload


def model_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """None if two model specs (as dicts) are the same network, else what differs."""
    from splitnet.model.spec import SpecError, load_spec

    try:  # compare what the specs mean, not how they were written (defaults spelled out or not)
        saved, current = load_spec(saved).to_dict(), load_spec(current).to_dict()
    except SpecError as exc:
        return f"the checkpoint's model spec no longer loads ({exc})"
    if saved == current:
        return None
    diffs = []
    for key in ("name", "input", "groups"):
        if saved.get(key) != current.get(key):
            diffs.append(f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now")
    a, b = saved.get("layers", []), current.get("layers", [])
    if len(a) != len(b):
        diffs.append(f"{len(a)} layers in the checkpoint, {len(b)} now")
    for la, lb in zip(a, b, strict=False):
        if la != lb:
            keys = sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k))
            diffs.append(f"layer {la.get('name')!r}: " + ", ".join(
                f"{k} {la.get(k)!r} -> {lb.get(k)!r}" for k in keys))
    return "; ".join(diffs) or "the layer specs differ"


def restore(ckpt: Path, plan: Plan, rank: int, model: Mapping[str, Any]) -> tuple[dict, dict, dict, Any]:
    """(model state, momentum by parameter name, meta, torch RNG state or None) for ``rank``.

    A checkpoint written under another plan (other mesh or strategy) is merged into the
    reference layout and split again for this one.
    """
    meta = read_meta(ckpt)
    diff = model_difference(meta["config"]["model"], model)
    if diff is not None:
        raise CheckpointError(f"checkpoint {ckpt} is for a different model: {diff}")
    old = Plan.from_dict(meta["plan"])
    mp = rank % plan.devices
    if old.to_dict()["layers"] == plan.to_dict()["layers"]:
        payload = read_shard(ckpt, mp)
        return payload["model"], payload["momentum"], meta, payload.get("rng")
    merged = _merged(ckpt, old, ("model", "momentum"))
    model_state = split_state(plan, merged["model"], rank)
    momentum = split_state(plan, merged["momentum"], rank) if merged["momentum"] else {}
    return model_state, momentum, meta, None  # another mesh: no rank's generator maps onto this one


def _merged(ckpt: Path, plan: Plan, keys: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Every rank's shard of ``plan`` read once, each of ``keys`` merged to the reference layout
    (empty where a shard has none, e.g. momentum before the first step)."""
    shards = [read_shard(ckpt, r) for r in range(plan.devices)]
    return {key: merge_state(plan, [s[key] for s in shards]) if all(s[key] for s in shards) else {}
            for key in keys}


def merged_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The whole model's state_dict (reference layout) from a checkpoint."""
    return _merged(ckpt, Plan.from_dict(read_meta(ckpt)["plan"]), ("model",))["model"]
