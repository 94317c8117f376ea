"""The shard reads its halos and read ranges from the plan, and refuses a plan whose halo does
not fit its shards (built without processes: a shard built without a transport only wires
its exchanges)."""

from __future__ import annotations

from typing import Any

import pytest

from splitnet.errors import SplitnetError
from splitnet.partition import Mesh, Plan, make_plan
from splitnet.runtime.shard import build_shard


def _plan(spec, devices: int = 6) -> Plan:
    return make_plan(spec, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=devices), 8)


def test_each_rank_sends_and_receives_exactly_the_plans_halo_moves(alexnet_small):
    plan = _plan(alexnet_small)
    for name in ("norm1", "norm2"):
        placement = plan.placement(name)
        moves = placement.exchange.moves
        for rank in range(6):
            module = getattr(build_shard(alexnet_small, plan, rank), name)
            own, reads = placement.shard(rank).out, placement.shard(rank).reads
            assert module.pre.own == own
            assert module.pre.sends == tuple((dst, ch) for src, dst, ch in moves if src == rank)
            assert module.pre.recvs == tuple((src, ch) for src, dst, ch in moves if dst == rank)
            # the LRN runs over what the plan says the rank reads, and keeps its own channels
            assert module.keep == (own[0] - reads[0], own[1] - reads[0])


def _tampered(plan: Plan, layer: str, change: Any) -> Plan:
    d = plan.to_dict()
    change(next(p for p in d["layers"] if p["name"] == layer))
    return Plan.from_dict(d)


def _shift_a_move(p: dict[str, Any]) -> None:
    p["exchange"]["moves"][0]["channels"] = [6, 8]  # rank 1 -> 0: 5..7 becomes 6..8, beyond rank 0's reads


def _drop_a_move(p: dict[str, Any]) -> None:
    del p["exchange"]["moves"][2]  # rank 2 -> 1: 10..12; rank 1 would read 3..12 with a gap


def _wrong_sender(p: dict[str, Any]) -> None:
    p["exchange"]["moves"][0]["from"] = 2  # rank 2 does not hold channels 5..7


def _narrow_the_reads(p: dict[str, Any]) -> None:
    p["shards"][0]["reads"] = [0, 6]  # the move 5..7 reaches past it


@pytest.mark.parametrize("change", [_shift_a_move, _drop_a_move, _wrong_sender, _narrow_the_reads])
def test_a_halo_that_does_not_fit_the_shards_is_refused(alexnet_small, change):
    plan = _tampered(_plan(alexnet_small), "norm1", change)
    with pytest.raises(SplitnetError, match="norm1.*the plan is inconsistent"):
        for rank in range(6):
            build_shard(alexnet_small, plan, rank)


def test_a_group_layer_reads_the_range_the_plan_states(alexnet_small):
    # 2 devices: conv2 on rank 0 reads its tower's 16 input channels, all it holds
    plan = _plan(alexnet_small, devices=2)
    assert plan.placement("conv2").shard(0).reads == (0, 16)
    assert build_shard(alexnet_small, plan, 0).conv2.read == (0, 16)

    def read_both_towers(p: dict[str, Any]) -> None:
        p["shards"][0]["reads"] = [0, 32]

    with pytest.raises(SplitnetError, match="conv2.*reads input channels \\(0, 32\\) but holds \\(0, 16\\)"):
        build_shard(alexnet_small, _tampered(plan, "conv2", read_both_towers), 0)
