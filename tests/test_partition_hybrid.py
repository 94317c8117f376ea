"""``hybrid``: "one weird trick" (Krizhevsky 2014): convs data-parallel, fully-connected
layers model-parallel. Expected figures worked out from AlexNet's shapes."""

from __future__ import annotations

from fractions import Fraction

import pytest

from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, PartitionError, make_plan

B = 128
F = 4
ALEXNET_PARAMS = 60_965_224
CONV_PARAMS = ((96 * 3 * 121 + 96) + (256 * 48 * 25 + 256) + (384 * 256 * 9 + 384)
               + (384 * 192 * 9 + 384) + (256 * 192 * 9 + 256))
FC_PARAMS = ALEXNET_PARAMS - CONV_PARAMS
CONV_NAMES = ("conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3",
              "conv4", "relu4", "conv5", "relu5", "pool5", "flatten")


def hybrid(spec, devices, exchange="auto", batch=B):
    return make_plan(spec, {"strategy": "hybrid", "exchange": exchange}, Mesh(devices=devices), batch)


def test_the_replicated_conv_layers_hold_the_specs_conv_parameters(alexnet):
    # hybrid replicates every layer before the first linear one: the spec's five conv layers,
    # whose parameters (inferred from the spec) are the hand-written 2012 figures above
    first_fc = next(i for i, layer in enumerate(alexnet.layers) if layer.op == "linear")
    conv = [layer for layer in alexnet.layers[:first_fc] if layer.weighted]
    assert [layer.name for layer in conv] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert sum(layer.params for layer in conv) == CONV_PARAMS == 2_334_080
    assert alexnet.total_params - CONV_PARAMS == FC_PARAMS


@pytest.mark.parametrize("devices", [2, 4])
def test_conv_layers_replicated_on_a_slice_of_the_batch(alexnet, devices):
    plan = hybrid(alexnet, devices)
    for name in CONV_NAMES:
        p = plan.placement(name)
        c = alexnet.layer(name).out_shape[0]
        assert p.batch_split, name
        assert [(s.rank, s.out) for s in p.shards] == [(r, (0, c)) for r in range(devices)]
        assert p.exchange is None
    fc6 = plan.placement("fc6")
    assert not fc6.batch_split
    assert [s.out for s in fc6.shards] == [(r * 4096 // devices, (r + 1) * 4096 // devices)
                                          for r in range(devices)]


@pytest.mark.parametrize("devices", [2, 4])
def test_fc6_gathers_every_devices_samples(alexnet, devices):
    ex = hybrid(alexnet, devices).exchanges()
    fc6 = ex["fc6"]
    assert (fc6.mode, fc6.collective, fc6.backward) == ("batch", "all_gather", "reduce_scatter")
    assert fc6.groups == (tuple(range(devices)),)
    # each device holds B/D samples of the 9216 pool5 features and receives the rest
    rest = Fraction(devices - 1, devices) * B * 9216 * F
    assert fc6.bytes_fwd == fc6.bytes_bwd == rest


@pytest.mark.parametrize("devices", [2, 4])
def test_conv_gradients_all_reduced(alexnet, devices):
    ex = hybrid(alexnet, devices).exchanges()
    grads = ex["conv_grads"]
    assert (grads.mode, grads.collective, grads.backward) == ("grads", "none", "all_reduce")
    assert grads.groups == (tuple(range(devices)),)
    # an all-reduce of exactly the conv weights and biases: 2(D-1)/D of their bytes
    assert grads.bytes_fwd == 0
    assert grads.bytes_bwd == Fraction(2 * (devices - 1), devices) * CONV_PARAMS * F


def test_exchanges_and_their_order(alexnet):
    auto, gather = hybrid(alexnet, 2).exchanges(), hybrid(alexnet, 2, "gather").exchanges()
    assert {k: e.mode for k, e in auto.items()} == {"fc6": "batch", "fc7": "gather", "fc8": "reduce",
                                                     "conv_grads": "grads"}
    assert {k: e.mode for k, e in gather.items()} == {"fc6": "batch", "fc7": "gather", "fc8": "gather",
                                                       "loss": "logits", "conv_grads": "grads"}


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_per_device_parameters_replicate_the_convs(alexnet, devices):
    plan = hybrid(alexnet, devices)
    assert [c.param_count for c in plan.costs] == [CONV_PARAMS + FC_PARAMS // devices] * devices
    assert sum(c.param_count for c in plan.costs) == ALEXNET_PARAMS + (devices - 1) * CONV_PARAMS


def test_conv_flops_split_by_the_batch(alexnet):
    plan = hybrid(alexnet, 4)
    conv = sum(alexnet.layer(n).flops for n in CONV_NAMES)
    fc = alexnet.total_flops - conv
    # convs: every device runs all channels on B/4 samples; fcs: a quarter of the channels on all B
    assert [c.flops for c in plan.costs] == [3 * (conv * (B // 4) + fc * B // 4)] * 4


def test_one_device_never_talks(alexnet):
    plan = hybrid(alexnet, 1)
    assert plan.exchanges() == {}
    assert [c.param_count for c in plan.costs] == [ALEXNET_PARAMS]


def test_every_device_needs_a_sample(alexnet_small):
    with pytest.raises(PartitionError, match=r"hybrid: batch_size=3 is smaller than mesh.devices=4.*batch_size >= 4"):
        hybrid(alexnet_small, 4, batch=3)


def test_uneven_batch_parts_differ_by_one_row(alexnet):
    # 128 rows over 3 devices: 42, 43, 43; fc6 gathers them padded to 43 rows of 9216 floats
    plan = hybrid(alexnet, 3, batch=128)
    fc6 = plan.placement("fc6").exchange
    assert fc6.parts == ((42, 43, 43),)
    assert fc6.bytes_fwd == fc6.bytes_bwd == 2 * 43 * 9216 * 4
    conv1 = plan.placement("conv1")
    assert [conv1.rows(128, 3, r) for r in range(3)] == [42, 43, 43]
    # rank 0 computes one row less of the convs; rank 2 one column more of each fc layer
    assert plan.costs[0].flops < plan.costs[1].flops < plan.costs[2].flops


def test_fc_layers_that_cannot_be_sharded(alexnet_small):
    # the convs are replicated, so only the fc layers (256, 256, 10 outputs) limit D
    with pytest.raises(PartitionError, match=r"hybrid: layer 'fc8' has out=10 .* mesh.devices=11.*<= 10"):
        hybrid(alexnet_small, 11)


def test_a_model_without_a_linear_layer():
    spec = load_spec({"name": "convs", "input": {"channels": 3, "size": 8},
                      "layers": [{"name": "c", "op": "conv", "out": 4, "kernel": 3}]})
    with pytest.raises(PartitionError, match="hybrid: convs has no linear layer to shard; use partition=columns"):
        hybrid(spec, 2)
