from __future__ import annotations

import itertools
import random

import pytest

from splitnet.partition import Mesh, PartitionError, make_plan
from splitnet.partition.pipeline import balanced_starts

B = 128
F = 4
ALEXNET_PARAMS = 60_965_224
STAGE_PARAMS = [
    (96 * 3 * 121 + 96) + (256 * 48 * 25 + 256),                                        # conv1, conv2
    (384 * 256 * 9 + 384) + (384 * 192 * 9 + 384) + (256 * 192 * 9 + 256),             # conv3-5
    (4096 * 9216 + 4096) + (4096 * 4096 + 4096) + (1000 * 4096 + 1000),                 # fc6-8
]


def pipeline(spec, devices, batch=B, **options):
    return make_plan(spec, {"strategy": "pipeline", **options}, Mesh(devices=devices), batch)


def test_named_boundaries(alexnet):
    plan = pipeline(alexnet, 3, boundaries=["conv3", "fc6"], microbatches=4)
    names = [layer.name for layer in alexnet.layers]
    stage = {p.name: p.stage for p in plan.layers if p.name in names}
    assert stage == {n: 0 if i < names.index("conv3") else 1 if i < names.index("fc6") else 2
                     for i, n in enumerate(names)}
    assert all(p.shards == () or [s.rank for s in p.shards] == [p.stage] for p in plan.layers)
    assert [c.param_count for c in plan.costs] == STAGE_PARAMS
    assert sum(STAGE_PARAMS) == ALEXNET_PARAMS
    assert plan.microbatches == 4


def test_named_boundaries_send_the_activation_and_its_gradient(alexnet):
    ex = pipeline(alexnet, 3, boundaries=["conv3", "fc6"]).exchanges()
    assert list(ex) == ["conv3", "fc6"]
    pool2, flat = 256 * 13 * 13 * F * B, 9216 * F * B
    assert (ex["conv3"].mode, ex["conv3"].collective, ex["conv3"].backward) == ("send", "send", "send")
    # forward: the next stage receives the whole activation; backward: the previous one its gradient
    assert ex["conv3"].received(1) == (pool2, 0)
    assert ex["conv3"].received(0) == (0, pool2)
    assert ex["conv3"].received(2) == (0, 0)
    assert ex["fc6"].received(2) == (flat, 0)
    assert ex["fc6"].received(1) == (0, flat)


def test_named_boundaries_bytes_in_and_activations(alexnet):
    plan = pipeline(alexnet, 3, boundaries=["conv3", "fc6"])
    pool2, flat = 256 * 13 * 13 * F * B, 9216 * F * B
    assert [c.bytes_in for c in plan.costs] == [pool2, pool2 + flat, flat]

    # the first stage keeps the big early activations (and its LRNs' temporaries) for the
    # whole batch; the last keeps little beyond the fully-connected weights
    acts = [c.activation_bytes for c in plan.costs]
    assert acts[0] > acts[1] > acts[2] > 0
    assert plan.costs[2].param_bytes > plan.costs[0].param_bytes


def _brute_force(costs: list[int], stages: int) -> int:
    """The smallest possible largest stage, over every way to cut into non-empty stages."""
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        bounds = [0, *cuts, len(costs)]
        worst = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        best = worst if best is None else min(best, worst)
    assert best is not None
    return best


def _largest(costs: list[int], starts: list[int]) -> int:
    bounds = [*starts, len(costs)]
    assert bounds[0] == 0 and all(a < b for a, b in itertools.pairwise(bounds))
    return max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))


def test_balanced_starts_is_optimal_against_brute_force():
    rng = random.Random(2012)
    for _ in range(300):
        n = rng.randint(1, 9)
        costs = [rng.choice([0, 1, 2, 3, 5, 8, 13, 100]) for _ in range(n)]
        stages = rng.randint(1, n)
        starts = balanced_starts(costs, stages)
        assert len(starts) == stages
        assert _largest(costs, starts) == _brute_force(costs, stages), (costs, stages)


def test_balanced_starts_small_cases():
    assert balanced_starts([1, 1, 1, 1], 2) == [0, 2]
    assert balanced_starts([10, 1, 1, 1], 2) == [0, 1]
    assert _largest([1, 9, 1], balanced_starts([1, 9, 1], 2)) == 10


@pytest.mark.parametrize("balance", ["flops", "params"])
@pytest.mark.parametrize("devices", [2, 3, 4])
def test_balance_is_optimal_on_alexnet(alexnet, balance, devices):
    plan = pipeline(alexnet, devices, balance=balance)
    costs = [getattr(layer, balance) for layer in alexnet.layers]
    starts = [next(i for i, p in enumerate(plan.layers) if p.stage == s) for s in range(devices)]
    assert _largest(costs, starts) == _brute_force(costs, devices)
    # each stage's share of the balanced cost, as reported
    bounds = [*starts, len(costs)]
    shares = [sum(costs[a:b]) / sum(costs) for a, b in itertools.pairwise(bounds)]
    assert plan.stage_share == pytest.approx(shares, abs=1e-4)
    assert sum(c.param_count for c in plan.costs) == ALEXNET_PARAMS
    assert list(plan.exchanges()) == [alexnet.layers[i].name for i in starts[1:]]


def test_balance_by_params_on_two_devices(alexnet):
    plan = pipeline(alexnet, 2, balance="params")
    # fc6 alone outweighs everything else: the best cut leaves conv1..fc6 (40,086,912
    # parameters) on one side and fc7, fc8 (20,878,312) on the other
    assert max(c.param_count for c in plan.costs) == STAGE_PARAMS[0] + STAGE_PARAMS[1] + 4096 * 9216 + 4096
    assert sorted(c.param_count for c in plan.costs) == [20_878_312, 40_086_912]


def test_one_stage(alexnet):
    plan = pipeline(alexnet, 1)
    assert plan.exchanges() == {}
    assert [c.param_count for c in plan.costs] == [ALEXNET_PARAMS]
    assert plan.output_rank == 0


def test_loss_on_the_last_stage(alexnet):
    plan = pipeline(alexnet, 3, boundaries=["conv3", "fc6"])
    assert plan.output_rank == 2
    assert plan.placement("loss").exchange is None


def test_rationale_reports_shares_and_the_bubble(alexnet):
    plan = pipeline(alexnet, 4, microbatches=8)
    # GPipe's fill-drain idle fraction (D-1)/(M+D-1) = 3/11 = 27%
    assert "8 micro-batch(es), idle fraction (D-1)/(M+D-1) = 27%" in plan.rationale
    shares = ", ".join(f"{s:.0%}" for s in plan.stage_share)
    assert f"shares of flops: {shares}" in plan.rationale


@pytest.mark.parametrize(("boundaries", "message"), [
    (["conv3", "fc9"], r"names 'fc9', which is not a layer of alexnet; layers: conv1, relu1"),
    (["conv3"], r"names 1 stage starts; mesh.devices=3 needs exactly 2"),
    (["conv3", "fc6", "fc7"], r"names 3 stage starts; mesh.devices=3 needs exactly 2"),
    (["fc6", "conv3"], r"must be layers in model order"),
    (["conv3", "conv3"], r"must be layers in model order"),
    (["conv1", "fc6"], r"must be layers in model order, after the first layer"),
])
def test_bad_boundaries(alexnet, boundaries, message):
    with pytest.raises(PartitionError, match=message):
        pipeline(alexnet, 3, boundaries=boundaries)


def test_one_boundary_may_be_a_bare_name(alexnet):
    # what `partition.boundaries=fc6` gives on the command line
    plan = pipeline(alexnet, 2, boundaries="fc6")
    assert list(plan.exchanges()) == ["fc6"]


def test_more_stages_than_layers_with_weights(alexnet_small):
    with pytest.raises(PartitionError, match=r"mesh.devices=24 stages but alexnet_small has only 8 layers with "
                                             r"weights, .*; use mesh.devices <= 8, or partition=columns"):
        pipeline(alexnet_small, 24)


def test_unknown_balance(alexnet_small):
    with pytest.raises(PartitionError, match="partition.balance='memory'; valid: flops, params"):
        pipeline(alexnet_small, 2, balance="memory")


@pytest.mark.parametrize("microbatches", [0, 3, 256])
def test_microbatches_must_divide_the_batch(alexnet_small, microbatches):
    with pytest.raises(PartitionError, match=rf"partition.microbatches={microbatches} must be >= 1 and "
                                             r"divide batch_size=128"):
        pipeline(alexnet_small, 2, microbatches=microbatches)


def test_equal_cuts_prefer_the_boundary_that_sends_fewer_bytes():
    from splitnet.partition.pipeline import balanced_starts

    # cutting before layer 1 or before layer 2 both give stages of 5: layer 2's input is smaller
    assert balanced_starts([5, 0, 5], 2, cut_bytes=[0, 10, 1]) == [0, 2]
    assert balanced_starts([5, 0, 5], 2, cut_bytes=[0, 1, 10]) == [0, 1]


def test_alexnet_small_balanced_on_params_cuts_where_the_activation_is_smallest(alexnet_small):
    from splitnet.partition import Mesh, make_plan

    plan = make_plan(alexnet_small, {"strategy": "pipeline", "balance": "params", "microbatches": 1},
                     Mesh(2), 8)
    cut = [p.name for p in plan.layers if p.exchange is not None]
    assert cut in (["flatten"], ["fc6"])  # both read the 64x3x3 = 576 values after pool5
    assert plan.placement(cut[0]).exchange.bytes_fwd == 8 * 576 * 4


def test_microbatches_must_be_a_whole_number(alexnet_small):
    from splitnet.partition import Mesh, PartitionError, make_plan

    with pytest.raises(PartitionError, match="microbatches=2.5"):
        make_plan(alexnet_small, {"strategy": "pipeline", "microbatches": 2.5}, Mesh(2), 8)


@pytest.mark.parametrize("balance", ["flops", "params"])
def test_every_stage_holds_a_layer_with_weights(alexnet_small, balance):
    weighted = {layer.name for layer in alexnet_small.layers if layer.params}
    for stages in range(1, len(weighted) + 1):
        plan = make_plan(alexnet_small, {"strategy": "pipeline", "balance": balance}, Mesh(devices=stages), 16)
        for stage in range(stages):
            held = {p.name for p in plan.layers if p.stage == stage}
            assert held & weighted, (stages, stage, held)
        assert all(c.param_count > 0 for c in plan.costs)


def test_boundaries_that_leave_a_stage_without_weights(alexnet_small):
    with pytest.raises(PartitionError, match=r"leave stage 1 \(relu1, norm1, pool1\) without a layer with "
                                             r"weights: .*every stage holds a conv or linear"):
        pipeline(alexnet_small, 3, boundaries=["relu1", "conv2"])
