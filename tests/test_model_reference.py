from __future__ import annotations

import pytest
import torch

from splitnet.model.layers import GroupLRN, set_step
from splitnet.model.reference import build_reference, initial_weight
from tests.conftest import SHIPPED, shipped_spec


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "alexnet"])
def test_reference_output_shapes_match_the_spec(name):
    spec = shipped_spec(name)
    model = build_reference(spec, seed=0)
    x = torch.randn(2, *spec.input_shape)
    h = x
    for layer, module in zip(spec.layers, model, strict=True):
        h = module(h)
        assert tuple(h.shape[1:]) in (layer.out_shape, (layer.out_shape[0],)), layer.name
    assert sum(p.numel() for p in model.parameters()) == spec.total_params


def test_alexnet_reference_forward_shape(alexnet):
    model = build_reference(alexnet, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_lrn_never_crosses_a_group_boundary():
    lrn = GroupLRN(5, 1e-1, 0.75, 2.0, groups=2)
    x = torch.rand(1, 8, 3, 3)
    y = lrn(x)
    x2 = x.clone()
    x2[:, 4:] *= 10.0  # group 1 only; its first channel neighbours group 0's last
    y2 = lrn(x2)
    assert torch.equal(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    whole = torch.nn.functional.local_response_norm(x2, 5, 1e-1, 0.75, 2.0)
    assert not torch.allclose(whole[:, :4], y2[:, :4]), "a plain LRN would mix the groups"


def test_init_is_deterministic_and_seeded(alexnet_small):
    a = build_reference(alexnet_small, seed=1).state_dict()
    b = build_reference(alexnet_small, seed=1).state_dict()
    c = build_reference(alexnet_small, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert torch.equal(a["conv2.bias"], torch.full((64,), 0.1))


def test_a_slice_of_a_layer_is_reproduced_alone(alexnet):
    fc8 = alexnet.layer("fc8")
    full = initial_weight(alexnet, fc8, seed=3, rows=range(0, 8))
    part = initial_weight(alexnet, fc8, seed=3, rows=range(5, 8))
    assert torch.equal(full[5:], part)
    assert abs(float(full.std()) - 0.01) < 0.001


def test_input_columns_of_a_layer_are_drawn_without_the_whole_layer(alexnet):
    fc6 = alexnet.layer("fc6")
    rows = initial_weight(alexnet, fc6, seed=3, rows=range(10, 14))
    cols = initial_weight(alexnet, fc6, seed=3, rows=range(10, 14), cols=(4608, 6912))
    assert cols.shape == (4, 2304) and torch.equal(cols, rows[:, 4608:6912])


def test_dropout_mask_depends_on_step_not_on_call_count(alexnet_small):
    model = build_reference(alexnet_small, seed=0).train()
    x = torch.randn(4, *alexnet_small.input_shape)
    set_step(model, 5)
    y1 = model(x)
    set_step(model, 5)
    y2 = model(x)
    set_step(model, 6)
    y3 = model(x)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


def test_a_layer_name_that_clashes_with_torch_is_a_clear_error():
    from splitnet.model.spec import SpecError, load_spec

    spec = load_spec({"name": "m", "input": {"channels": 1, "size": 8}, "layers": [
        {"name": "forward", "op": "conv", "out": 2, "kernel": 3}, {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 2}]})
    with pytest.raises(SpecError, match="layer 'forward': the name clashes"):
        build_reference(spec)
