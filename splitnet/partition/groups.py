"""The process groups a plan's ranks open, and how many communicators that makes per rank.

Each replica opens the same groups, named by model-parallel ranks and a lane. Lane 0
carries every exchange of a whole batch; a chunked step (``plan.chunks``) runs each chunk's
exchanges on its own lane, so lanes 1.. copy only the groups the chunked layers talk in.
Every lane also holds the group of all the replica's devices: its point-to-point transfers
(halos, pipeline stages) travel there, paired by their order within the lane, since NCCL
ignores tags. Under NCCL each group a rank belongs to is one communicator (GPU memory and
start-up time), so the count is part of the plan.
"""

from __future__ import annotations

from splitnet.partition.plan import Plan

Group = tuple[tuple[int, ...], int]  # (model-parallel ranks, lane)


def _talking(plan: Plan, names: tuple[str, ...] | None) -> set[tuple[int, ...]]:
    """The groups of more than one rank that the collectives of ``names`` (None: all) use."""
    return {g for name, ex in plan.exchanges().items() if ex.collective != "send"
            and (names is None or name in names) for g in ex.groups if len(g) > 1}


def _order(group: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    return len(group), group


def process_groups(plan: Plan) -> tuple[Group, ...]:
    """Every (model-parallel ranks, lane) group of one replica, in the order all ranks create them."""
    everyone = {tuple(range(plan.devices))}
    lanes = [(g, 0) for g in sorted(everyone | _talking(plan, None), key=_order)]
    chunked = everyone | _talking(plan, plan.in_chunks())
    lanes += [(g, lane) for lane in range(1, plan.chunks) for g in sorted(chunked, key=_order)]
    return tuple(lanes)


def communicators(plan: Plan, mp_rank: int) -> int:
    """The process groups (NCCL communicators) model-parallel rank ``mp_rank`` opens: its
    groups of more than one rank, its data-parallel group, and the job's default group."""
    own = sum(1 for g, _ in process_groups(plan) if len(g) > 1 and mp_rank in g)
    return own + (plan.replicas > 1) + 1
