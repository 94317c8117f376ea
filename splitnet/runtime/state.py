"""Merge and split of model state between a plan's shards and the reference layout.

``merge_state(plan, shards)`` joins the ranks' state dicts (parameters, or anything
shaped like them: gradients, momentum) into the reference's state_dict;
``split_state(plan, state, rank)`` cuts one rank's back out. They are exact inverses, so
a model trained on one mesh continues on another, and the reference loads a split model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from splitnet.errors import SplitnetError
from splitnet.partition.plan import Placement, Plan


def _weighted(plan: Plan, state_keys: set[str]) -> list[Placement]:
    return [p for p in plan.layers if f"{p.name}.weight" in state_keys]


def merge_state(plan: Plan, shards: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``shards[r]`` is model-parallel rank r's state dict (any replica's)."""
    if len(shards) != plan.devices:
        raise SplitnetError(f"merge_state: the plan has {plan.devices} devices, got {len(shards)} shards")
    keys = set().union(*(s.keys() for s in shards))
    merged: dict[str, torch.Tensor] = {}
    for p in _weighted(plan, keys):
        w, b = f"{p.name}.weight", f"{p.name}.bias"
        if p.batch_split or len(p.shards) == 1:
            merged[w], merged[b] = shards[p.shards[0].rank][w], shards[p.shards[0].rank][b]
            continue
        ordered = sorted(p.shards, key=lambda s: s.out)
        merged[b] = torch.cat([shards[s.rank][b] for s in ordered])
        if ordered[0].cols is not None:
            merged[w] = torch.cat([shards[s.rank][w] for s in sorted(p.shards, key=lambda s: s.cols)], dim=1)
        else:
            merged[w] = torch.cat([shards[s.rank][w] for s in ordered])
    return merged


def split_state(plan: Plan, state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Global (or model-parallel) rank ``rank``'s slice of a reference-layout state dict."""
    mp = rank % plan.devices
    out: dict[str, torch.Tensor] = {}
    for p in _weighted(plan, set(state)):
        shard = p.shard(mp)
        if shard is None:
            continue
        w, b = state[f"{p.name}.weight"], state[f"{p.name}.bias"]
        o0, o1 = shard.out
        if p.batch_split or len(p.shards) == 1:
            out[f"{p.name}.weight"], out[f"{p.name}.bias"] = w.clone(), b.clone()
        elif shard.cols is not None:
            out[f"{p.name}.weight"] = w[:, shard.cols[0]:shard.cols[1]].clone()
            out[f"{p.name}.bias"] = b[o0:o1].clone()
        else:
            out[f"{p.name}.weight"], out[f"{p.name}.bias"] = w[o0:o1].clone(), b[o0:o1].clone()
    return out
