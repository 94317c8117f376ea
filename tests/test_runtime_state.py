"""Each rank holds only its share, with the reference's values; merge/split of state are
exact inverses. Pure: shards are built without a transport, no processes."""

from __future__ import annotations

import pytest
import torch

import splitnet.model.reference
from splitnet.errors import SplitnetError
from splitnet.model.reference import build_reference
from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.runtime import build_shard, merge_state, split_state
from tests.conftest import shipped_spec
from tests.splitting import alexnet_small_12

SMALL = shipped_spec("alexnet_small")
SMALL_12 = load_spec(alexnet_small_12())

# (spec, partition, mesh): every strategy and exchange mode the runtime implements
PLANS = {
    "columns-D2-gather": (SMALL, {"strategy": "columns", "exchange": "gather"}, Mesh(2)),
    "columns-D2-reduce": (SMALL, {"strategy": "columns", "exchange": "reduce"}, Mesh(2)),
    "columns-D4": (SMALL_12, {"strategy": "columns", "exchange": "auto"}, Mesh(4)),
    "columns-D4-reduce": (SMALL_12, {"strategy": "columns", "exchange": "reduce"}, Mesh(4)),
    "pipeline-D3": (SMALL, {"strategy": "pipeline", "microbatches": 4}, Mesh(3)),
    "hybrid-D2-gather": (SMALL, {"strategy": "hybrid", "exchange": "gather"}, Mesh(2)),
    "hybrid-D2-reduce": (SMALL, {"strategy": "hybrid", "exchange": "reduce"}, Mesh(2)),
    "replicas2-x-columns-D2": (SMALL, {"strategy": "columns", "exchange": "auto"}, Mesh(2, replicas=2)),
    # uneven shards: widths 3 and 5 do not divide, and a device holds parts of two towers
    "uneven-columns-D3-reduce": (SMALL, {"strategy": "columns", "exchange": "reduce"}, Mesh(3)),
    "uneven-columns-D5-gather": (SMALL, {"strategy": "columns", "exchange": "gather"}, Mesh(5)),
    "uneven-hybrid-D3-reduce": (SMALL, {"strategy": "hybrid", "exchange": "reduce"}, Mesh(3)),
}
SEED = 7


def _plan(name):
    spec, partition, mesh = PLANS[name]
    return spec, make_plan(spec, partition, mesh, 8)


def _equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module", params=sorted(PLANS))
def case(request):
    spec, plan = _plan(request.param)
    ref = build_reference(spec, SEED).state_dict()
    shards = [build_shard(spec, plan, rank, seed=SEED) for rank in range(plan.devices * plan.replicas)]
    return plan, ref, shards


def test_shard_holds_exactly_its_share_of_the_reference_values(case):
    plan, ref, shards = case
    for rank, shard in enumerate(shards):
        cost = plan.costs[rank % plan.devices]
        assert sum(p.numel() for p in shard.parameters()) == cost.param_count
        assert sum(p.numel() * p.element_size() for p in shard.parameters()) == cost.param_bytes
        _equal(shard.state_dict(), split_state(plan, ref, rank))


def test_merging_fresh_shards_gives_the_reference_state_dict(case):
    plan, ref, shards = case
    for replica in range(plan.replicas):
        group = shards[replica * plan.devices:(replica + 1) * plan.devices]
        _equal(merge_state(plan, [s.state_dict() for s in group]), ref)


def test_split_then_merge_is_the_identity(case):
    plan, ref, _ = case
    gen = torch.Generator().manual_seed(0)
    state = {key: torch.randn(value.shape, generator=gen) for key, value in ref.items()}
    _equal(merge_state(plan, [split_state(plan, state, r) for r in range(plan.devices)]), state)


def test_merge_then_split_is_the_identity(case):
    plan, _, shards = case
    gen = torch.Generator().manual_seed(1)
    states = [{key: torch.randn(value.shape, generator=gen) for key, value in s.state_dict().items()}
              for s in shards[:plan.devices]]
    for p in plan.layers:  # a replicated (hybrid conv) layer holds the same values on every rank
        if p.batch_split and f"{p.name}.weight" in states[0]:
            for s in states[1:]:
                s[f"{p.name}.weight"], s[f"{p.name}.bias"] = states[0][f"{p.name}.weight"], states[0][f"{p.name}.bias"]
    merged = merge_state(plan, states)
    for rank in range(plan.devices * plan.replicas):
        _equal(split_state(plan, merged, rank), states[rank % plan.devices])


def test_columns_shards_partition_the_model_without_overlap(case):
    plan, ref, shards = case
    if plan.strategy == "hybrid":  # conv layers are replicated by design
        assert sum(plan.costs[r].param_count for r in range(plan.devices)) > sum(v.numel() for v in ref.values())
        return
    held = sum(p.numel() for s in shards[:plan.devices] for p in s.parameters())
    assert held == sum(v.numel() for v in ref.values())


def test_state_moves_between_meshes():
    spec, a = _plan("columns-D2-reduce")
    _, b = _plan("pipeline-D3")
    gen = torch.Generator().manual_seed(2)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in build_reference(spec, 0).state_dict().items()}
    on_a = [split_state(a, state, r) for r in range(a.devices)]
    on_b = [split_state(b, merge_state(a, on_a), r) for r in range(b.devices)]
    _equal(merge_state(b, on_b), state)


@pytest.mark.parametrize(("first", "second"), [("columns-D2-gather", "uneven-columns-D3-reduce"),
                                               ("uneven-columns-D5-gather", "columns-D4")])
def test_state_reshards_between_even_and_uneven_meshes(first, second):
    spec, b = _plan(second)  # columns-D4 is alexnet_small with 12 outputs: both plans on its spec
    a = make_plan(spec, PLANS[first][1], PLANS[first][2], 8)
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in build_reference(spec, 0).state_dict().items()}
    on_a = [split_state(a, state, r) for r in range(a.devices)]
    on_b = [split_state(b, merge_state(a, on_a), r) for r in range(b.devices)]
    back = [split_state(a, merge_state(b, on_b), r) for r in range(a.devices)]
    for mine, again in zip(on_a, back, strict=True):
        _equal(mine, again)
    _equal(merge_state(b, on_b), state)


def test_merge_state_refuses_the_wrong_number_of_shards():
    _, plan = _plan("columns-D2-gather")
    with pytest.raises(SplitnetError, match="the plan has 2 devices, got 1 shards"):
        merge_state(plan, [{}])


@pytest.mark.parametrize("exchange", ["auto", "gather"])
def test_alexnet_rank_draws_only_its_own_rows(alexnet, exchange, monkeypatch):
    """A rank of 2-device alexnet never draws rows outside its shard; a reduce-mode layer
    (input columns) draws every row but keeps only its columns, one row at a time."""
    real = splitnet.model.reference.draw_rows
    drawn = []

    def recording(seed, layer, rows, row_shape, std, cols=None):
        drawn.append((layer, rows, cols))
        return real(seed, layer, rows, row_shape, std, cols)

    monkeypatch.setattr(splitnet.model.reference, "draw_rows", recording)
    plan = make_plan(alexnet, {"strategy": "columns", "exchange": exchange}, Mesh(2), 128)
    reduce = {name for name, ex in plan.exchanges().items() if ex.mode == "reduce"}
    assert bool(reduce) == (exchange == "auto")
    weighted = [layer for layer in alexnet.layers if layer.weighted]
    for rank in range(2):
        drawn.clear()
        shard = build_shard(alexnet, plan, rank)
        assert [layer for layer, _, _ in drawn] == [layer.name for layer in weighted]  # each layer once, in order
        for layer, rows, cols in drawn:
            out = alexnet.layer(layer).out
            if layer in reduce:
                assert rows == range(out)
                assert cols == plan.placement(layer).shard(rank).cols
                assert getattr(shard, layer).weight.shape[1] == cols[1] - cols[0]
            else:
                assert rows == range(*plan.placement(layer).shard(rank).out) and cols is None
                assert len(rows) == out // 2
        assert sum(p.numel() for p in shard.parameters()) == plan.costs[rank].param_count
