"""``columns``: the 2012 layout and its generalisations. Expected figures are worked out
here from AlexNet's shapes (paper section 3.5, Figure 2), never read back from the code."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, PartitionError, make_plan
from splitnet.partition.plan import Plan

B = 128          # batch
F = 4            # float32
ALEXNET_PARAMS = 60_965_224
# Output shapes of AlexNet's layers (C, H, W), as in the paper's Figure 2.
POOL2 = 256 * 13 * 13
FLAT = 256 * 6 * 6          # 9216, fc6's input
# Parameters per layer: out * in_per_group * k^2 + out (bias).
CONV = {"conv1": 96 * 3 * 11 * 11 + 96, "conv2": 256 * 48 * 5 * 5 + 256, "conv3": 384 * 256 * 3 * 3 + 384,
        "conv4": 384 * 192 * 3 * 3 + 384, "conv5": 256 * 192 * 3 * 3 + 256}
FC = {"fc6": 4096 * FLAT + 4096, "fc7": 4096 * 4096 + 4096, "fc8": 1000 * 4096 + 1000}


def plan_of(spec, devices=2, exchange="gather", batch=B, **mesh):
    return make_plan(spec, {"strategy": "columns", "exchange": exchange}, Mesh(devices=devices, **mesh), batch)


def test_the_spec_infers_alexnets_parameter_counts(alexnet):
    # the figures the tests below use are the 2012 network's, written out by hand; the spec
    # infers its own from the layer sizes and groups
    assert {layer.name: layer.params for layer in alexnet.layers if layer.weighted} == {**CONV, **FC}
    assert alexnet.total_params == ALEXNET_PARAMS


def test_2012_layout_talks_only_at_conv3_fc6_fc7_fc8_and_the_loss(alexnet):
    plan = plan_of(alexnet)
    ex = plan.exchanges()
    assert list(ex) == ["conv3", "fc6", "fc7", "fc8", "loss"]
    assert all(plan.placement(p.name).exchange is None for p in plan.layers if p.name not in ex)
    for name in ("conv3", "fc6", "fc7", "fc8"):
        assert (ex[name].mode, ex[name].collective, ex[name].backward) == (
            "gather", "all_gather", "reduce_scatter")
        assert ex[name].groups == ((0, 1),)
    assert (ex["loss"].mode, ex["loss"].collective, ex["loss"].backward) == ("logits", "all_gather", "none")


def test_the_rationale_names_the_connecting_layers_or_says_there_are_none(alexnet):
    assert "devices talk only at conv3, fc6, fc7, fc8, loss" in plan_of(alexnet).rationale
    alone = plan_of(alexnet, devices=1)
    assert alone.rationale.endswith("no device talks to another") and "talk only" not in alone.rationale


def test_2012_layout_exchange_bytes(alexnet):
    ex = plan_of(alexnet).exchanges()
    # conv3 reads both towers' pool2 output: each device receives the other's 13x13x128 floats
    per_sample = 13 * 13 * 128 * 4
    assert per_sample == 86_528
    assert ex["conv3"].bytes_fwd == ex["conv3"].bytes_bwd == 86_528 * B
    # all-gather / reduce-scatter over 2 devices: each receives the half it does not hold
    assert ex["fc6"].bytes_fwd == ex["fc6"].bytes_bwd == FLAT // 2 * F * B
    assert ex["fc7"].bytes_fwd == ex["fc7"].bytes_bwd == 2048 * F * B
    assert ex["fc8"].bytes_fwd == ex["fc8"].bytes_bwd == 2048 * F * B
    assert (ex["loss"].bytes_fwd, ex["loss"].bytes_bwd) == (500 * F * B, 0)


def test_2012_layout_each_device_holds_half_the_parameters(alexnet):
    plan = plan_of(alexnet)
    assert [c.param_count for c in plan.costs] == [ALEXNET_PARAMS // 2] * 2
    assert sum(c.param_count for c in plan.costs) == plan.model_params == ALEXNET_PARAMS
    for c in plan.costs:
        # SGD with momentum in float32: weights, gradients, one momentum buffer
        assert c.param_bytes == c.grad_bytes == c.optimizer_bytes == ALEXNET_PARAMS // 2 * F


def test_2012_layout_shards_follow_the_towers(alexnet):
    plan = plan_of(alexnet)
    for layer in alexnet.layers:
        c = layer.out_shape[0]
        shards = plan.placement(layer.name).shards
        assert [(s.rank, s.out, s.cols) for s in shards] == [(0, (0, c // 2), None), (1, (c // 2, c), None)]


def test_2012_layout_bytes_in_per_device(alexnet):
    plan = plan_of(alexnet)
    expected = (2 * 86_528 * B + 2 * FLAT // 2 * F * B + 2 * 2 * 2048 * F * B + 500 * F * B)
    assert [c.bytes_in for c in plan.costs] == [expected, expected]
    assert plan.total_exchange_bytes == 2 * expected


def test_2012_layout_flops_split_evenly(alexnet):
    plan = plan_of(alexnet)
    # forward + backward = 3 x forward, each device computes half of every layer
    assert [c.flops for c in plan.costs] == [3 * alexnet.total_flops * B // 2] * 2


TINY = {"name": "tiny", "input": {"channels": 3, "size": 8}, "groups": 2, "layers": [
    {"name": "conv1", "op": "conv", "out": 4, "kernel": 3, "pad": 1, "connect": "full"},
    {"name": "relu1", "op": "relu"},
    {"name": "flatten", "op": "flatten"},
    {"name": "fc", "op": "linear", "out": 6, "connect": "full"},
]}


def test_memory_on_one_device_is_the_peak_of_a_step_by_hand():
    plan = make_plan(load_spec(TINY), {"strategy": "columns"}, Mesh(devices=1), 4)
    fc = 4 * (6 * 256 + 6)
    params = 4 * (4 * 3 * 9 + 4) + fc
    batch = 4 * 3 * 64 * 4 + 4 * 8                 # float32 images, int64 labels
    relu = 4 * 4 * 64 * 4                           # conv1 keeps the batch, relu1 its output
    logits = 4 * 6 * 4                              # the logits and their log-softmax
    # the peak: backward through flatten (or relu1), fc's gradients made, relu1's output
    # still kept, and its gradient in and out in flight; parameters and momentum throughout
    peak = 2 * params + batch + (relu + 2 * logits) + fc + 2 * relu
    assert plan.costs[0].memory_bytes == peak
    assert plan.costs[0].activation_bytes == peak - 3 * params


def test_alexnet_per_device_memory_falls_with_the_device_count(alexnet):
    one, two, four = (max(c.memory_bytes for c in plan_of(alexnet, devices=d).costs) for d in (1, 2, 4))
    assert two <= 0.55 * one and four <= 0.35 * one


def test_auto_switches_fc8_to_reduce_and_cuts_its_bytes(alexnet):
    gather, auto = plan_of(alexnet, exchange="gather"), plan_of(alexnet, exchange="auto")
    g, a = gather.exchanges(), auto.exchanges()
    assert (a["fc8"].mode, a["fc8"].collective, a["fc8"].backward) == ("reduce", "all_reduce", "none")
    assert "loss" not in a   # the all-reduce leaves every device the whole logits
    # gather: all-gather fc8's 4096 inputs forward, reduce-scatter their gradient backward,
    # then all-gather the 1000 logits for the loss; each over 2 devices moves half the tensor.
    gather_bytes = 4096 * F * B // 2 + 4096 * F * B // 2 + 1000 * F * B // 2
    # reduce: one all-reduce of the 1000 partial logits, 2(D-1)/D = 1 times the tensor.
    reduce_bytes = 1000 * F * B
    assert g["fc8"].bytes_fwd + g["fc8"].bytes_bwd + g["loss"].bytes_fwd == gather_bytes == 2_353_152
    assert a["fc8"].bytes_fwd + a["fc8"].bytes_bwd == reduce_bytes == 512_000
    assert Fraction(gather_bytes, reduce_bytes) == Fraction(9192, 2000)   # 4.596x fewer bytes
    # reduce holds every output row and half the input columns: still half the weights
    shards = auto.placement("fc8").shards
    assert [(s.out, s.cols) for s in shards] == [((0, 500), (0, 2048)), ((500, 1000), (2048, 4096))]
    assert [c.param_count for c in auto.costs] == [ALEXNET_PARAMS // 2] * 2


def test_auto_picks_the_cheaper_mode_per_connecting_layer(alexnet):
    ex = plan_of(alexnet, exchange="auto").exchanges()
    # conv3: gather moves its 256x13x13 input, reduce its 384x13x13 output: gather.
    # fc6: 9216 inputs against 4096 outputs: reduce. fc7: 4096 both ways, a tie: gather.
    assert {k: e.mode for k, e in ex.items()} == {"conv3": "gather", "fc6": "reduce", "fc7": "gather",
                                                   "fc8": "reduce"}
    assert ex["fc6"].bytes_fwd == ex["fc6"].bytes_bwd == 4096 * F * B // 2
    assert (ex["fc6"].collective, ex["fc6"].backward) == ("reduce_scatter", "all_gather")


def test_reduce_everywhere(alexnet):
    plan = plan_of(alexnet, exchange="reduce")
    ex = plan.exchanges()
    assert {k: e.mode for k, e in ex.items()} == dict.fromkeys(("conv3", "fc6", "fc7", "fc8"), "reduce")
    assert ex["conv3"].bytes_fwd == 384 * 13 * 13 * F * B // 2
    assert plan.placement("conv3").shard(1).cols == (128, 256)
    assert sum(c.param_count for c in plan.costs) == ALEXNET_PARAMS


def test_four_devices_two_towers(alexnet):
    plan = plan_of(alexnet, devices=4)
    ex = plan.exchanges()
    towers = ((0, 1), (2, 3))
    # a tower over two devices: conv2, conv4, conv5 read the rest of their own tower, and an
    # LRN needs its channel neighbours across the cut; connecting layers read all four.
    assert list(ex) == ["norm1", "conv2", "norm2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8", "loss"]
    for name in ("norm1", "conv2", "norm2", "conv4", "conv5"):
        assert ex[name].groups == towers, name
    for name in ("conv3", "fc6", "fc7", "fc8", "loss"):
        assert ex[name].groups == ((0, 1, 2, 3),), name
    # within a tower (2 devices): half of one tower's input; an LRN only the 2 channels its
    # window reads across the cut, forward and (their gradients, sent back) backward
    assert ex["norm1"].bytes_fwd == ex["norm1"].bytes_bwd == 2 * 55 * 55 * F * B
    assert ex["conv2"].bytes_fwd == 48 * 27 * 27 * F * B // 2
    assert ex["norm2"].bytes_fwd == 2 * 27 * 27 * F * B
    assert ex["conv4"].bytes_fwd == ex["conv5"].bytes_fwd == 192 * 13 * 13 * F * B // 2
    # across all four: 3/4 of the whole input
    assert ex["conv3"].bytes_fwd == Fraction(3, 4) * POOL2 * F * B
    assert ex["fc6"].bytes_fwd == Fraction(3, 4) * FLAT * F * B
    assert [s.out for s in plan.placement("conv2").shards] == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert [c.param_count for c in plan.costs] == [ALEXNET_PARAMS // 4] * 4


def test_one_device_holds_everything_and_never_talks(alexnet):
    plan = plan_of(alexnet, devices=1, exchange="auto")
    assert plan.exchanges() == {}
    assert [(c.param_count, c.bytes_in) for c in plan.costs] == [(ALEXNET_PARAMS, 0)]
    assert plan.total_exchange_bytes == 0
    assert plan.costs[0].flops == 3 * alexnet.total_flops * B


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("exchange", ["gather", "reduce", "auto"])
def test_device_parameters_sum_to_the_model(alexnet, devices, exchange):
    plan = plan_of(alexnet, devices=devices, exchange=exchange)
    assert [c.param_count for c in plan.costs] == [ALEXNET_PARAMS // devices] * devices


def _towers(groups: int) -> dict:
    return {"name": "towers", "input": {"channels": 3, "size": 8}, "groups": groups, "layers": [
        {"name": "c1", "op": "conv", "out": 8, "kernel": 3, "pad": 1, "connect": "full"},
        {"name": "c2", "op": "conv", "out": 8, "kernel": 3, "pad": 1, "connect": "group"},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 4, "connect": "full"}]}


@pytest.mark.parametrize(("groups", "devices", "c2_groups"), [
    (4, 2, None),            # two towers per device: a group layer never leaves its device
    (4, 4, None),            # one tower per device, the 2012 case
    (2, 4, ((0, 1), (2, 3))),  # a tower over two devices: a group layer gathers within it
])
def test_devices_equal_divide_or_multiply_the_group_count(groups, devices, c2_groups):
    spec = load_spec(_towers(groups))
    plan = plan_of(spec, devices=devices)
    ex = plan.exchanges()
    assert (ex["c2"].groups if "c2" in ex else None) == c2_groups
    assert ex["fc"].groups == (tuple(range(devices)),)
    assert sum(c.param_count for c in plan.costs) == spec.total_params


def test_more_devices_than_the_narrowest_layer_are_refused(alexnet_small):
    with pytest.raises(PartitionError, match=r"layer 'fc8' has out=10 channels, fewer than mesh.devices=11, so "
                       r"some device would hold none of it; use mesh.devices <= 10"):
        plan_of(alexnet_small, devices=11)


@pytest.mark.parametrize("devices", range(1, 11))
def test_any_device_count_up_to_the_narrowest_layer(alexnet_small, devices):
    plan = plan_of(alexnet_small, devices=devices, exchange="auto")
    for p in plan.layers:
        if not p.shards:
            continue
        width = alexnet_small.layer(p.name).out_shape[0] if p.op != "flatten" else 64 * 3 * 3
        sizes = [s.out[1] - s.out[0] for s in p.shards]
        starts = [s.out[0] for s in p.shards]
        # contiguous, covering, in rank order, as equal as possible
        assert starts[0] == 0 and sum(sizes) == width and starts == [sum(sizes[:r]) for r in range(devices)]
        if alexnet_small.layer(p.name).weighted:
            assert max(sizes) - min(sizes) <= 1, p.name
    assert sum(c.param_count for c in plan.costs) == alexnet_small.total_params


def test_cuts_fall_on_tower_boundaries_where_they_can(alexnet_small):
    # fc8: 10 outputs in 2 towers of 5 over 4 devices: 2 + 3 | 2 + 3, the middle cut on the tower edge
    plan = plan_of(alexnet_small, devices=4)
    assert [s.out for s in plan.placement("fc8").shards] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    # 6 devices: conv1's 32 channels as 5, 5, 6 | 5, 5, 6; conv2 gathers within each tower
    plan = plan_of(alexnet_small, devices=6)
    assert [s.out[1] - s.out[0] for s in plan.placement("conv1").shards] == [5, 5, 6, 5, 5, 6]
    conv2 = plan.placement("conv2").exchange
    assert conv2.groups == ((0, 1, 2), (3, 4, 5)) and conv2.parts == ((5, 5, 6), (5, 5, 6))


def test_lrn_across_a_device_edge_takes_only_its_windows_reach_from_the_neighbours(alexnet_small):
    # 6 devices: norm1's towers 0..16 and 16..32 each over 3 devices (5, 5, 6 channels); a
    # window of 5 reads 2 channels each side, never across the tower edge at 16
    norm1 = plan_of(alexnet_small, devices=6).placement("norm1").exchange
    assert (norm1.mode, norm1.collective, norm1.backward) == ("halo", "send", "send")
    assert norm1.groups == ((0, 1), (1, 2), (3, 4), (4, 5))
    channel = B * 32 * 32 * F  # one channel of conv1's 32x32 output, for the batch
    received = [norm1.received(r) for r in range(6)]
    # device 0 receives 5..7, device 1 3..5 and 10..12, device 2 8..10; backward returns as much
    assert received == [(2 * channel, 2 * channel), (4 * channel, 4 * channel), (2 * channel, 2 * channel)] * 2


def test_a_halo_states_every_move_and_what_each_device_reads(alexnet_small):
    # the same 6 devices (tower 0: 0..5 | 5..10 | 10..16, tower 1 the same 16 channels on):
    # each move is (from, to, channels), receivers in rank order
    norm1 = plan_of(alexnet_small, devices=6).placement("norm1")
    tower0 = [(1, 0, (5, 7)), (0, 1, (3, 5)), (2, 1, (10, 12)), (1, 2, (8, 10))]
    moves = tuple(tower0 + [(src + 3, dst + 3, (a + 16, b + 16)) for src, dst, (a, b) in tower0])
    assert norm1.exchange.moves == moves
    # a device reads its own channels and what the moves bring it, never across a tower edge
    assert [s.reads for s in norm1.shards] == [(0, 7), (3, 12), (8, 16), (16, 23), (19, 28), (24, 32)]
    channel = B * 32 * 32 * F
    for r in range(6):  # the bytes are the moves': forward what comes in, backward what went out
        assert norm1.exchange.received(r) == (
            sum(b - a for _, dst, (a, b) in moves if dst == r) * channel,
            sum(b - a for src, _, (a, b) in moves if src == r) * channel)
    # where no window crosses a device edge there is no halo, and no move
    assert plan_of(alexnet_small, devices=2).placement("norm1").exchange is None


def test_each_shard_states_the_input_channels_it_reads(alexnet):
    plan = plan_of(alexnet, devices=4, exchange="auto")
    # conv2 (connect: group, 2 towers of 48 input channels): a device reads its tower's inputs
    assert [s.reads for s in plan.placement("conv2").shards] == [(0, 48), (0, 48), (48, 96), (48, 96)]
    # conv5 sums partial outputs within a tower: a device reads the columns it holds
    conv5 = plan.placement("conv5").shards
    assert [s.reads for s in conv5] == [(0, 96), (96, 192), (192, 288), (288, 384)]
    assert [s.reads for s in conv5] == [s.out for s in plan.placement("conv4").shards]
    # conv3 (connect: full, gathered) reads its whole input: stated as nothing
    assert [s.reads for s in plan.placement("conv3").shards] == [None] * 4
    # a reduce-mode connecting layer reads the input columns it holds
    fc7 = plan_of(alexnet, devices=2, exchange="reduce").placement("fc7").shards
    assert [s.reads for s in fc7] == [s.cols for s in fc7] == [(0, 2048), (2048, 4096)]


def test_a_device_across_a_tower_edge_gathers_from_both_towers(alexnet_small):
    # 3 devices: conv1's 32 channels as 10 | 11 | 11; device 1 holds 10..21, across the tower
    # edge at 16, so conv2 (connect: group) on device 1 reads both towers: all three gather
    plan = plan_of(alexnet_small, devices=3)
    assert [s.out for s in plan.placement("conv1").shards] == [(0, 10), (10, 21), (21, 32)]
    conv2 = plan.placement("conv2").exchange
    assert conv2.groups == ((0, 1, 2),) and conv2.parts == ((10, 11, 11),)
    # every part travels padded to the largest, 11 channels of pool1's 15x15 map
    assert conv2.bytes_fwd == conv2.bytes_bwd == 2 * 11 * 15 * 15 * B * F
    # conv3 reads every channel: 21 | 21 | 22 of pool2's 7x7 map
    conv3 = plan_of(alexnet_small, devices=3, exchange="gather").placement("conv3").exchange
    assert conv3.parts == ((21, 21, 22),) and conv3.bytes_fwd == 2 * 22 * 7 * 7 * B * F


def test_a_group_layer_sums_partial_outputs_within_a_tower_when_that_moves_less(alexnet):
    # 4 devices, 2 per tower. conv5 reads 192 channels per tower and writes 128 (13x13):
    # gathering the tower's input moves 96 channels into each device, summing partial outputs 64
    plan = plan_of(alexnet, devices=4, exchange="auto")
    conv5 = plan.placement("conv5")
    assert conv5.exchange.mode == "reduce" and conv5.exchange.groups == ((0, 1), (2, 3))
    assert conv5.exchange.bytes_fwd == conv5.exchange.bytes_bwd == 64 * 13 * 13 * B * F
    assert [(s.out, s.cols, s.rows) for s in conv5.shards] == [
        ((0, 64), (0, 96), (0, 128)), ((64, 128), (96, 192), (0, 128)),
        ((128, 192), (0, 96), (128, 256)), ((192, 256), (96, 192), (128, 256))]
    held = sum(c.param_count for c in plan.costs) - sum(
        c.param_count for c in plan_of(alexnet, devices=4, exchange="gather").costs)
    assert held == 0  # the same weights, cut the other way: every rank 128 x 96 x 3 x 3 + 64
    # conv2 widens its towers (48 -> 128 channels at 27x27): gathering stays cheaper
    assert plan.placement("conv2").exchange.mode == "gather"
    # conv4 (192 -> 192) moves the same bytes either way; summing keeps 96 input channels for
    # backward instead of the tower's 192, so it wins the tie
    conv4 = plan.placement("conv4").exchange
    assert conv4.mode == "reduce" and conv4.bytes_fwd == 96 * 13 * 13 * B * F
    assert plan_of(alexnet, devices=4, exchange="reduce").placement("conv2").exchange.mode == "reduce"


def test_reduce_mode_columns_are_the_inputs_a_device_holds(alexnet_small):
    # fc6 reads the flattened 64 x 3 x 3 map; 3 devices hold 21, 21, 22 channels of it
    fc6 = plan_of(alexnet_small, devices=3, exchange="reduce").placement("fc6")
    assert [s.cols for s in fc6.shards] == [(0, 189), (189, 378), (378, 576)]
    assert fc6.exchange.parts == ((85, 85, 86),) and fc6.exchange.bytes_fwd == 2 * 86 * B * F


def test_uneven_plans_round_trip_through_json(alexnet_small):
    plan = plan_of(alexnet_small, devices=5, exchange="gather")
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan and again.placement("conv3").exchange.parts == ((12, 13, 13, 13, 13),)


def test_unknown_exchange_mode(alexnet_small):
    with pytest.raises(PartitionError, match="partition.exchange='scatter'; valid: gather, reduce, auto"):
        plan_of(alexnet_small, exchange="scatter")


@pytest.mark.parametrize("devices", [2, 3, 4])
def test_per_map_ops_need_no_exchange_where_the_maps_are_split(devices):
    """cuda-convnet's rnorm and pooling read each map alone: however the maps are cut, their
    shards are their input's and nothing moves there (LRN, across maps, would take a halo)."""
    from tests.conftest import shipped_spec

    spec = shipped_spec("cuda_convnet_18pct")
    plan = plan_of(spec, devices=devices)
    per_map = [p for p in plan.layers if p.op in ("rnorm", "avgpool", "maxpool")]
    assert {p.op for p in per_map} == {"rnorm", "avgpool", "maxpool"}
    for p in per_map:
        assert p.exchange is None
        before = plan.layers[plan.layers.index(p) - 1]
        assert [s.out for s in p.shards] == [s.out for s in before.shards]
    assert list(plan.exchanges()) == ["conv2", "conv3", "fc10", "loss"]
