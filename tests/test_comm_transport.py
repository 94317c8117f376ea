"""The transport under NCCL's rules (``comm.nccl_rules=true``), on gloo CPU processes.

NCCL pairs point-to-point transfers by their order within a process group (tags are
ignored), returns one work for a whole ``batch_isend_irecv``, wants a collective in a
group before point-to-point that involves only some of its ranks, and a stall is caught
by the group's own timeout rather than a polling wait. The transport's strict mode makes
gloo behave so; these tests hold the transport to each rule, and
tests/test_runtime_equivalence.py runs the strategies under it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist

from splitnet.comm.transport import Transport
from splitnet.launchers.simulate import WorkerFailed, launch
from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.partition.groups import communicators, process_groups
from splitnet.partition.plan import Plan
from tests.splitting import model_dict


def _plan(devices: int = 2, chunks: int = 2, replicas: int = 1) -> Plan:
    spec = load_spec(model_dict("alexnet_small"))
    return make_plan(spec, {"strategy": "columns", "exchange": "auto", "chunks": chunks},
                     Mesh(devices, replicas), 8)


def swap_lanes_crossed(rank: int, world: int, cfg: dict[str, Any]) -> list[torch.Tensor]:
    """Both ranks swap a tensor on lane 0 and lane 1, rank 0 starting lane 0 first and rank 1
    lane 1 first (as autograd may order two chunks' backward); returns what arrived per lane."""
    transport = Transport(Plan.from_dict(cfg["plan"]), rank, timeout_s=20, nccl_rules=True)
    peer = 1 - rank
    lanes = [0, 1] if rank == 0 else [1, 0]
    started = {}
    for lane in lanes:
        mine = torch.full((2, 3), float(10 * rank + lane), dtype=cfg["dtype"])
        started[lane] = transport.start_swap([(peer, mine)], [(peer, (2, 3))], 0, "norm1", "fwd",
                                             lane=lane, dtype=cfg["dtype"])
    return [transport.complete(started[lane])[0] for lane in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_lane_pairs_its_own_transfers_without_tags_in_the_senders_dtype(dtype):
    """Lane order differs between the ranks and no tag tells lanes apart: only a process group
    per lane pairs lane 0 with lane 0. The buffers take the sender's dtype (bf16 halves)."""
    cfg = {"plan": _plan().to_dict(), "dtype": dtype}
    got = launch(swap_lanes_crossed, 2, cfg, timeout_s=60)
    for rank, lanes in enumerate(got):
        peer = 1 - rank
        for lane, t in enumerate(lanes):
            assert t.dtype == dtype
            assert torch.equal(t, torch.full((2, 3), float(10 * peer + lane), dtype=dtype)), (rank, lane, t)


def one_sided_halo(rank: int, world: int, cfg: dict[str, Any]) -> list[torch.Tensor]:
    """The middle rank of three both sends and receives (one work for its whole batch under
    NCCL); the edge ranks only talk to it."""
    transport = Transport(Plan.from_dict(cfg["plan"]), rank, timeout_s=20, nccl_rules=True)
    peers = [p for p in (rank - 1, rank + 1) if 0 <= p < world]
    outgoing = [(p, torch.full((1, 2), float(rank))) for p in peers]
    incoming = [(p, (1, 2)) for p in peers]
    swap = transport.start_swap(outgoing, incoming, 0, "norm1", "fwd", lane=0, dtype=torch.float32)
    return transport.complete(swap)


@pytest.mark.slow
def test_a_rank_that_sends_and_receives_completes_one_work_for_its_whole_batch():
    results = launch(one_sided_halo, 3, {"plan": _plan(devices=3, chunks=1).to_dict()}, timeout_s=60)
    assert [[float(t[0, 0]) for t in got] for got in results] == [[1.0], [0.0, 2.0], [1.0]]


def stall_on_receive(rank: int, world: int, cfg: dict[str, Any]) -> None:
    """Rank 1 waits for a halo rank 0 never sends; rank 0 waits for rank 1 to give up."""
    transport = Transport(Plan.from_dict(cfg["plan"]), rank, timeout_s=cfg["timeout_s"], nccl_rules=True)
    if rank == 1:
        swap = transport.start_swap([], [(0, (1, 2))], 0, "norm2", "bwd", lane=0, dtype=torch.float32)
        transport.complete(swap)
    else:
        # never passed by rank 1; its own timeout is long, so rank 1's stall is the first failure
        dist.monitored_barrier(timeout=timedelta(seconds=60))


@pytest.mark.slow
def test_a_stall_is_caught_by_the_groups_timeout_and_names_rank_layer_and_collective():
    cfg = {"plan": _plan(chunks=1).to_dict(), "timeout_s": 2}
    with pytest.raises(WorkerFailed) as failed:
        launch(stall_on_receive, 2, cfg, timeout_s=2)
    assert failed.value.rank == 1
    # a SplitnetError is the job's one line: StalledExchange's message, not its traceback
    assert str(failed.value).startswith("rank 1: the swap at layer 'norm2' did not complete within "
                                        "comm.timeout_s=2s: a peer went silent")
    assert "Traceback" not in str(failed.value)


def p2p_before_collective(rank: int, world: int, cfg: dict[str, Any]) -> None:
    transport = Transport(Plan.from_dict(cfg["plan"]), rank, timeout_s=20, nccl_rules=True)
    transport._ready.clear()  # as if the transport had not opened its groups with a collective
    transport.start_swap([(1 - rank, torch.zeros(1))], [(1 - rank, (1,))], 0, "norm1", "fwd", lane=0,
                         dtype=torch.float32)


@pytest.mark.slow
def test_point_to_point_before_any_collective_in_its_group_is_refused():
    with pytest.raises(WorkerFailed, match="point-to-point at layer 'norm1' in a process group that has run "
                                           "no collective yet"):
        launch(p2p_before_collective, 2, {"plan": _plan(chunks=1).to_dict()}, timeout_s=60)


@pytest.mark.parametrize(("devices", "chunks", "replicas"), [(2, 1, 1), (3, 2, 1), (2, 4, 2)])
def test_the_plan_says_how_many_process_groups_a_rank_opens(devices, chunks, replicas):
    """Every lane beyond the first copies only the groups the chunked layers talk in."""
    plan = _plan(devices, chunks, replicas)
    groups = process_groups(plan)
    chunked = {g for name, ex in plan.exchanges().items() if name in plan.in_chunks() and ex.collective != "send"
               for g in ex.groups if len(g) > 1} | {tuple(range(devices))}
    for lane in range(1, chunks):
        assert {g for g, n in groups if n == lane} == chunked
    assert len(groups) == len(set(groups))
    whole = {g for ex in plan.exchanges().values() if ex.collective != "send" for g in ex.groups if len(g) > 1}
    assert {g for g, n in groups if n == 0} == whole | {tuple(range(devices))}


def too_many_lanes(rank: int, world: int, cfg: dict[str, Any]) -> None:
    Transport(Plan.from_dict(cfg["plan"]), rank, timeout_s=20, nccl_rules=True, max_communicators=8)


@pytest.mark.slow
def test_more_communicators_than_the_bound_are_refused_naming_the_fix():
    plan = _plan(devices=2, chunks=8)
    assert communicators(plan, 0) == 9  # 8 lanes of the two devices' group, and the default group
    with pytest.raises(WorkerFailed, match=r"rank \d would open 9 NCCL communicators \(partition.chunks=8 lanes "
                                           r"of process groups\); comm.max_communicators=8: lower partition.chunks"):
        launch(too_many_lanes, 2, {"plan": plan.to_dict()}, timeout_s=60)
