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
        if ordered[0].cols is not None:  # blocks of (weight rows, columns): place each one
            out = ordered[-1].out[1]
            width = max(s.cols[1] for s in ordered if s.cols is not None)
            first = shards[ordered[0].rank][w]
            whole = first.new_zeros((out, width, *first.shape[2:]))
            for s in ordered:
                r0, r1 = s.weight_rows(out)
                c0, c1 = s.cols if s.cols is not None else (0, width)
                whole[r0:r1, c0:c1] = shards[s.rank][w]
            merged[w] = whole
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
            r0, r1 = shard.weight_rows(w.shape[0])
            out[f"{p.name}.weight"] = w[r0:r1, shard.cols[0]:shard.cols[1]].clone()
            out[f"{p.name}.bias"] = b[o0:o1].clone()
        else:
            out[f"{p.name}.weight"], out[f"{p.name}.bias"] = w[o0:o1].clone(), b[o0:o1].clone()
    return out
