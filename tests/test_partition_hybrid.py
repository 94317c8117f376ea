"""``hybrid``: "one weird trick" (Krizhevsky 2014): convs data-parallel, fully-connected
layers model-parallel. Expected figures worked out from AlexNet's shapes."""

from __future__ import annotations

from fractions import Fraction

import pytest

from splitnet.partition import Mesh, PartitionError, make_plan
from splitnet.spec import load_spec

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


def test_conv_parameters():
    assert CONV_PARAMS == 2_334_080


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


def test_batch_must_divide_over_the_devices(alexnet_small):
    with pytest.raises(PartitionError, match=r"hybrid: batch_size=126 must be divisible by mesh.devices=4"):
        hybrid(alexnet_small, 4, batch=126)


def test_fc_layers_that_cannot_be_sharded(alexnet):
    # the convs are replicated, so only the fc layers (4096, 4096, 1000 outputs) limit D
    with pytest.raises(PartitionError, match=r"hybrid: layer 'fc8' .* mesh.devices=16.*\[1, 2, 4, 8\]"):
        hybrid(alexnet, 16)


def test_a_model_without_a_linear_layer():
    spec = load_spec({"name": "convs", "input": {"channels": 3, "size": 8},
                      "layers": [{"name": "c", "op": "conv", "out": 4, "kernel": 3}]})
    with pytest.raises(PartitionError, match="hybrid: convs has no linear layer to shard; use partition=columns"):
        hybrid(spec, 2)
