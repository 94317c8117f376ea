"""A chunked columns step overlaps each chunk's exchange with another chunk's compute.

One rank's shard runs on a transport that moves nothing and records when each exchange
starts and completes, on which lane. The values are meaningless (a gather repeats this
rank's part); equality with the reference is proven by the chunked cases of
test_runtime_equivalence.py. Here: the order, which is what buys the overlap, and the
lanes, which keep every rank's collectives in the same order per process group.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from splitnet.comm.meter import Meter
from splitnet.comm.transport import Pending
from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, PartitionError, make_plan
from splitnet.partition.plan import Plan
from splitnet.runtime import build_shard
from splitnet.verify import verify_batch
from tests.splitting import alexnet_small_12, model_dict


class RecordingTransport:
    """Stands in for the Transport of model-parallel rank ``mp_rank``: every transfer returns
    a tensor of the right shape at once, and every start and completion is logged as
    (event, layer, direction, lane)."""

    def __init__(self, mp_rank: int) -> None:
        self.mp_rank, self.device, self.meter = mp_rank, torch.device("cpu"), Meter()
        self.dtype = torch.float32
        self.log: list[tuple[str, str, str, int]] = []

    def _pending(self, layer: str, direction: str, lane: int, result: Any) -> Pending:
        self.log.append(("start", layer, direction, lane))

        def done() -> Any:
            self.log.append(("complete", layer, direction, lane))
            return result
        return Pending(lane, layer, "test", done)

    def start_all_gather(self, x: torch.Tensor, ranks: tuple[int, ...], layer: str, direction: str, dim: int,
                         sizes: Any = None, lane: int = 0) -> Pending:
        return self._pending(layer, direction, lane, torch.cat([x] * len(ranks), dim=dim))

    def start_reduce_scatter(self, x: torch.Tensor, ranks: tuple[int, ...], layer: str, direction: str, dim: int,
                             sizes: Any = None, lane: int = 0) -> Pending:
        return self._pending(layer, direction, lane, x.chunk(len(ranks), dim=dim)[0].clone())

    def group(self, ranks: tuple[int, ...], lane: int = 0) -> tuple[int, ...]:
        return ranks

    def start_all_reduce(self, x: torch.Tensor, group: Any, k: int, layer: str, direction: str,
                         lane: int = 0) -> int:
        self.log.append(("start", layer, direction, lane))
        return lane  # the work: here, the lane

    def start_swap(self, outgoing: Any, incoming: list[tuple[int, tuple[int, ...]]], tag: int, layer: str,
                   direction: str, *, lane: int, dtype: torch.dtype) -> Pending:
        return self._pending(layer, direction, lane, [torch.zeros(shape, dtype=dtype) for _, shape in incoming])

    def complete(self, pending: Pending) -> torch.Tensor:
        if pending.what == "all_reduce":  # the sum's Pending is made by the exchange op, not here
            self.log.append(("complete", pending.layer, "fwd", pending.work))
        return pending.done()


Log = list[tuple[str, str, str, int]]


def _run(chunks: int, rows: int = 8, devices: int = 2, rank: int = 0) -> tuple[Plan, Log]:
    """One training forward and backward of ``rank``'s shard of alexnet_small (fc8 widened to
    12 outputs, so 4 devices divide every layer)."""
    spec = load_spec(alexnet_small_12())
    plan = make_plan(spec, {"strategy": "columns", "exchange": "auto", "chunks": chunks}, Mesh(devices), 8)
    transport = RecordingTransport(rank)
    shard = build_shard(spec, plan, rank, transport=transport)  # type: ignore[arg-type]
    x, y = verify_batch(spec, 0, 0, rows)
    logits = shard(x)
    assert logits.shape == (rows, 12)
    F.cross_entropy(logits, y).backward()
    return plan, transport.log


def _talking(plan: Plan, rank: int) -> list[str]:
    """The exchange points at which ``rank`` takes part, in plan order."""
    return [name for name, ex in plan.exchanges().items()
            if (group := ex.group_of(rank)) is not None and len(group) > 1 or name in _halo_layers(plan, rank)]


def _halo_layers(plan: Plan, rank: int) -> set[str]:
    return {name for name, ex in plan.exchanges().items() if ex.mode == "halo" and any(ex.received(rank))}


def _events(log: Log, layer: str, direction: str) -> list[tuple[str, int]]:
    return [(event, lane) for event, name, d, lane in log if name == layer and d == direction]


def _first(events: list[tuple[str, int]], wanted: tuple[str, int]) -> int:
    return events.index(wanted)


# alexnet_small_12 at D=4, rank 1: LRN halos, a tower gather (conv2), a gather of everything
# (conv3), tower partial sums (conv4, conv5) in the chunked layers; fc6-fc8 whole
WAVEFRONT = {"devices": 4, "rank": 1}


def test_the_spatial_layers_run_in_chunks_and_the_fully_connected_ones_whole():
    spec = load_spec(model_dict("alexnet_small"))
    plan = make_plan(spec, {"strategy": "columns", "chunks": 2}, Mesh(2), 8)
    names = [layer.name for layer in spec.layers]
    assert plan.in_chunks() == tuple(names[:names.index("fc6")])
    assert "the batch runs in 2 chunks up to fc6" in plan.rationale
    assert make_plan(spec, {"strategy": "columns"}, Mesh(2), 8).in_chunks() == ()


@pytest.mark.parametrize("rows", [8, 3])
def test_each_chunks_exchange_starts_before_the_previous_chunk_waits_for_its_own(rows):
    plan, log = _run(2, rows, **WAVEFRONT)
    chunked = [name for name in _talking(plan, 1) if name in plan.in_chunks()]
    assert chunked == ["norm1", "conv2", "norm2", "conv3", "conv4", "conv5"]
    for layer in chunked:
        fwd = _events(log, layer, "fwd")
        # lane 1 starts while lane 0's exchange is still travelling: that is the overlap
        assert _first(fwd, ("start", 0)) < _first(fwd, ("start", 1)) < _first(fwd, ("complete", 0)), (layer, fwd)
        bwd = _events(log, layer, "bwd")
        # backward: both chunks' gradients travel before either is waited on
        assert max(_first(bwd, ("start", 0)), _first(bwd, ("start", 1))) < min(
            _first(bwd, ("complete", 0)), _first(bwd, ("complete", 1))), (layer, bwd)


def test_the_whole_batch_layers_exchange_once_and_at_once():
    plan, log = _run(2, **WAVEFRONT)
    whole = [name for name in _talking(plan, 1) if name not in plan.in_chunks()]
    assert whole == ["fc6", "fc7", "fc8"]
    for layer in whole:
        fwd = _events(log, layer, "fwd")
        assert fwd == [("start", 0), ("complete", 0)], (layer, fwd)
        i = log.index(("start", layer, "fwd", 0))
        assert log[i + 1] == ("complete", layer, "fwd", 0)
        assert _events(log, layer, "bwd") in ([], [("start", 0), ("complete", 0)])


def test_every_lane_runs_its_exchanges_in_plan_order_forward_and_reverse_backward():
    plan, log = _run(2, **WAVEFRONT)
    for lane in (0, 1):
        layers = [name for name in _talking(plan, 1) if lane == 0 or name in plan.in_chunks()]
        starts = [(name, d) for event, name, d, l_ in log if event == "start" and l_ == lane]
        fwd = [name for i, (name, d) in enumerate(starts) if d == "fwd" and starts[i - 1] != (name, d)]
        bwd = [name for i, (name, d) in enumerate(starts) if d == "bwd" and starts[i - 1] != (name, d)]
        assert fwd == layers
        assert bwd == [name for name in reversed(layers) if _events(log, name, "bwd")]
        assert starts.index((bwd[0], "bwd")) > starts.index((fwd[-1], "fwd"))


@pytest.mark.parametrize(("chunks", "rows"), [(1, 8), (4, 1)])
def test_one_chunk_completes_every_exchange_before_starting_the_next(chunks, rows):
    # (4, 1): a last evaluation batch of one row runs as one chunk, never as empty ones
    plan, log = _run(chunks, rows)
    assert {lane for *_rest, lane in log} == {0}
    assert [event for event, *_rest in log] == ["start", "complete"] * (len(log) // 2)


@pytest.mark.parametrize(("partition", "message"), [
    ({"strategy": "columns", "chunks": 9}, "partition.chunks=9 must be an integer from 1 to min(batch_size=8, 64)"),
    ({"strategy": "columns", "chunks": 0}, "partition.chunks=0 must be an integer from 1"),
    ({"strategy": "columns", "chunks": True}, "partition.chunks=True"),
    ({"strategy": "auto", "chunks": 0}, "partition.chunks=0 must be an integer"),  # not a silent other winner
    ({"strategy": "pipeline", "chunks": 2}, "partition.chunks=2 overlaps a columns plan's exchanges"),
    ({"strategy": "hybrid", "chunks": 2}, "use partition=columns"),
])
def test_chunks_that_cannot_run_are_refused_by_name(partition, message):
    spec = load_spec(model_dict("alexnet_small"))
    with pytest.raises(PartitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_plan(spec, partition, Mesh(2), 8)


def test_auto_passes_the_chunks_to_columns_and_says_when_its_winner_drops_them():
    spec = load_spec(model_dict("alexnet_small"))
    partition = {"strategy": "auto", "chunks": 2, "microbatches": 4}
    plan = make_plan(spec, partition, Mesh(2), 8)
    assert (plan.strategy, plan.chunks) == ("columns", 2)
    # fc8 narrowed to 2 outputs: on 3 devices it rules out columns and hybrid, so a pipeline wins
    narrow = model_dict("alexnet_small")
    narrow["layers"][-1] = {**narrow["layers"][-1], "out": 2}
    plan = make_plan(load_spec(narrow), partition, Mesh(3), 8)
    assert (plan.strategy, plan.chunks) == ("pipeline", 1)
    assert "partition.chunks=2 applies to columns only" in plan.rationale


def test_the_cost_model_holds_backward_temporaries_for_one_chunk_at_a_time():
    spec = load_spec(model_dict("alexnet"))
    whole, halves = (make_plan(spec, {"strategy": "columns", "chunks": c}, Mesh(2), 32) for c in (1, 2))
    for a, b in zip(whole.costs, halves.costs, strict=True):
        assert (a.param_bytes, a.flops, a.bytes_in) == (b.param_bytes, b.flops, b.bytes_in)
        # measured with splitnet profile (batch 32): 575 / 572 MiB whole, 558 / 558 MiB in 2 chunks
        assert 0.95 < b.memory_bytes / a.memory_bytes < 0.98, (a.memory_bytes, b.memory_bytes)


def test_the_plan_records_its_chunks_and_round_trips_them():
    spec = load_spec(model_dict("alexnet_small"))
    plan = make_plan(spec, {"strategy": "columns", "chunks": 3}, Mesh(2), 8)
    assert plan.chunks == 3 and Plan.from_dict(json.loads(plan.to_json())).chunks == 3
    assert make_plan(spec, {"strategy": "columns"}, Mesh(2), 8).chunks == 1
