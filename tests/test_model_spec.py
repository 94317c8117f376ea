from __future__ import annotations

import copy

import pytest

from splitnet.model.spec import SpecError, load_spec

TINY = {
    "name": "tiny",
    "input": {"channels": 3, "size": 8},
    "groups": 2,
    "layers": [
        {"name": "c1", "op": "conv", "out": 4, "kernel": 3, "pad": 1, "connect": "full"},
        {"name": "r1", "op": "relu"},
        {"name": "c2", "op": "conv", "out": 4, "kernel": 3, "connect": "group"},
        {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 6, "connect": "full"},
    ],
}


def tiny(**layer_changes: dict) -> dict:
    d = copy.deepcopy(TINY)
    for layer in d["layers"]:
        layer.update(layer_changes.get(layer["name"], {}))
    return d


def test_alexnet_parameter_count_and_feature_maps(alexnet):
    assert alexnet.total_params == 60_965_224
    maps = {layer.name: layer.out_shape for layer in alexnet.layers}
    assert maps["conv1"] == (96, 55, 55)
    assert maps["conv2"] == (256, 27, 27)
    assert maps["conv3"] == (384, 13, 13)
    assert maps["conv4"] == (384, 13, 13)
    assert maps["conv5"] == (256, 13, 13)
    assert maps["pool5"] == (256, 6, 6)
    assert maps["flatten"] == (9216, 1, 1)


def test_alexnet_connectivity_is_the_papers(alexnet):
    connect = {layer.name: layer.connect for layer in alexnet.layers if layer.weighted}
    assert connect == {"conv1": "full", "conv2": "group", "conv3": "full", "conv4": "group",
                       "conv5": "group", "fc6": "full", "fc7": "full", "fc8": "full"}
    assert alexnet.layer("conv2").params == 256 * 48 * 25 + 256


def test_alexnet_small_keeps_the_topology(alexnet, alexnet_small):
    def skeleton(spec):
        return [(layer.op, layer.connect) for layer in spec.layers]

    assert skeleton(alexnet_small) == skeleton(alexnet)
    assert alexnet_small.input_shape == (3, 32, 32)


def test_flops_of_a_conv_follow_the_stated_rule(alexnet):
    conv1 = alexnet.layer("conv1")
    assert conv1.flops == 2 * 96 * 3 * 11 * 11 * 55 * 55 + 96 * 55 * 55


def test_round_trip(alexnet):
    assert load_spec(alexnet.to_dict()) == alexnet


@pytest.mark.parametrize(
    ("spec", "layer", "words"),
    [
        (tiny(r1={"op": "softmax"}), "r1", "unknown op 'softmax'"),
        (tiny(c1={"kernal": 3}), "c1", "unknown key(s) ['kernal']"),
        (tiny(c1={"out": None}), "c1", "needs out"),
        (tiny(c2={"out": 5}), "c2", "not divisible by groups=2"),
        (tiny(c1={"groups": 1}), "c2", "its input has 1 group"),
        (tiny(r1={"connect": "full"}), "r1", "'connect' only applies to layers with weights"),
        (tiny(c2={"kernel": 11}), "c2", "kernel=11 is larger than its padded input"),
        (tiny(c1={"stride": 0}), "c1", "stride=0 must be an integer >= 1"),
        (tiny(r1={"name": "c1"}), "c1", "duplicate layer name"),
        (tiny(f={"op": "relu"}), "fc", "add a 'flatten' layer"),
        (tiny(c1={"connect": "sideways"}), "c1", "valid: group, full"),
    ],
)
def test_bad_specs_name_the_layer_and_the_fix(spec, layer, words):
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert f"layer {layer!r}" in str(err.value)
    assert words in str(err.value)


def test_non_positive_output_size():
    spec = tiny()
    spec["layers"].insert(2, {"name": "p", "op": "maxpool", "kernel": 2, "stride": 2})
    spec["layers"].insert(3, {"name": "p2", "op": "maxpool", "kernel": 2, "stride": 2})
    spec["layers"].insert(4, {"name": "p3", "op": "maxpool", "kernel": 2, "stride": 2})
    with pytest.raises(SpecError, match="layer 'c2'.*kernel=3 is larger"):
        load_spec(spec)


def test_empty_layer_list():
    with pytest.raises(SpecError, match="non-empty list"):
        load_spec({**TINY, "layers": []})


def test_weightless_ops_inherit_groups_and_shapes():
    spec = load_spec(tiny())
    assert spec.layer("r1").groups == 2
    assert spec.layer("c2").out_shape == (4, 6, 6)
    assert spec.layer("f").out_shape == (144, 1, 1)
    assert spec.layer("fc").params == 6 * 144 + 6


@pytest.mark.parametrize(
    ("spec", "layer", "words"),
    [
        (tiny(f={"op": "relu"}), "fc", "linear needs a flat input, got a 4x6x6 map"),
        (tiny(r1={"op": "lrn", "size": 3, "alpha": "small"}), "r1", "alpha='small' must be a number"),
        (tiny(c1={"bias_init": "one"}), "c1", "bias_init='one' must be a number"),
    ],
)
def test_more_bad_specs(spec, layer, words):
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert f"layer {layer!r}" in str(err.value) and words in str(err.value)


def test_a_linear_layer_needs_a_flatten_even_after_a_1x1_map():
    spec = tiny(c2={"kernel": 8, "pad": 1})  # c2 leaves a 4x1x1 map: still a map, not flat
    spec["layers"] = [layer for layer in spec["layers"] if layer["name"] != "f"]
    with pytest.raises(SpecError, match="layer 'fc'.*add a 'flatten'"):
        load_spec(spec)


def test_conv_after_flatten_is_refused():
    spec = tiny()
    spec["layers"].insert(4, {"name": "c3", "op": "conv", "out": 2, "kernel": 1})
    with pytest.raises(SpecError, match="layer 'c3'.*its input is flat"):
        load_spec(spec)


@pytest.mark.parametrize("name", ["a.b", "2conv", "_hidden", "with space"])
def test_layer_names_must_be_identifiers(name):
    with pytest.raises(SpecError, match=f"name {name!r} must be an identifier"):
        load_spec(tiny(r1={"name": name}))


def test_flatness_is_inferred():
    spec = load_spec(tiny())
    assert [layer.flat for layer in spec.layers] == [False, False, False, True, True]


def test_a_connecting_layers_width_need_not_divide_its_groups():
    spec = load_spec(tiny(fc={"out": 3}))  # 3 classes over 2 groups: shards of 1 and 2
    assert spec.layer("fc").out_shape == (3, 1, 1) and spec.layer("fc").groups == 2
    uneven = tiny(c1={"out": 5})
    uneven["layers"][1] = {"name": "r1", "op": "lrn", "size": 3}
    with pytest.raises(SpecError, match="layer 'r1'.*5 input channels do not split into 2 equal groups"):
        load_spec(uneven)


@pytest.mark.parametrize(("size", "kernel", "stride", "pad"), [(32, 3, 2, 0), (15, 3, 2, 0), (8, 2, 2, 0),
                                                              (7, 3, 2, 1), (6, 3, 3, 1), (55, 3, 2, 0)])
@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_pool_output_sizes_are_torchs_in_both_roundings(op, size, kernel, stride, pad):
    import torch

    pool = {"maxpool": torch.nn.MaxPool2d, "avgpool": torch.nn.AvgPool2d}[op]
    for ceil in (False, True):
        spec = load_spec({"name": "m", "input": {"channels": 2, "size": size}, "layers": [
            {"name": "p", "op": op, "kernel": kernel, "stride": stride, "pad": pad, "ceil": ceil}]})
        y = pool(kernel, stride, pad, ceil_mode=ceil)(torch.zeros(1, 2, size, size))
        assert spec.layers[0].out_shape == tuple(y.shape[1:]), ceil
        assert spec.layers[0].flops == y.numel() * kernel * kernel


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"op": "dropout", "scale": "half"}, "scale='half'; valid: train"),
        ({"op": "maxpool", "kernel": 2, "ceil": "yes"}, "ceil='yes' must be true"),
        ({"op": "rnorm", "size": 3}, "op 'rnorm' needs alpha"),
    ],
)
def test_new_op_keys_are_checked(change, words):
    with pytest.raises(SpecError) as err:
        load_spec(tiny(r1=change))
    assert "layer 'r1'" in str(err.value) and words in str(err.value)


def test_rnorm_keeps_the_shape_and_counts_its_window():
    spec = load_spec(tiny(r1={"op": "rnorm", "size": 3, "alpha": 5e-5}))
    r1 = spec.layer("r1")
    assert r1.out_shape == r1.in_shape == (4, 8, 8)
    assert r1.flops == (2 * 3 * 3 + 3) * 4 * 8 * 8
    assert (r1.beta, r1.k) == (0.75, 1.0)
