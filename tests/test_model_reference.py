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


def _with_dropout_scale(spec_dict: dict, scale: str) -> dict:
    return {**spec_dict, "layers": [{**layer, "scale": scale} if layer["op"] == "dropout" else layer
                                    for layer in spec_dict["layers"]]}


def test_test_time_scaling_is_inverted_dropout_with_the_next_layers_weights_rescaled(alexnet_small):
    """Paper section 4.2 ("multiply the outputs by 0.5 at test time") against inverted dropout:
    the same function once every weighted layer after a dropout has its weights divided by
    the dropout's keep probability, in training (same masks) and in evaluation."""
    from splitnet.model.spec import load_spec

    train_scaled = build_reference(alexnet_small, seed=0)
    test_spec = load_spec(_with_dropout_scale(alexnet_small.to_dict(), "test"))
    test_scaled = build_reference(test_spec, seed=0)
    layers = list(test_spec.layers)
    state = train_scaled.state_dict()
    for i, layer in enumerate(layers):
        if layer.op == "dropout":
            assert layer.scale == "test" and alexnet_small.layers[i].scale == "train"
            after = next(later for later in layers[i + 1:] if later.weighted)
            state[f"{after.name}.weight"] = state[f"{after.name}.weight"] / (1.0 - layer.p)
    test_scaled.load_state_dict(state)
    x = torch.randn(6, *alexnet_small.input_shape)
    for model in (train_scaled, test_scaled):
        model.train()
        set_step(model, 3)
    torch.testing.assert_close(test_scaled(x), train_scaled(x), rtol=1e-5, atol=1e-6)
    train_scaled.eval()
    test_scaled.eval()
    with torch.no_grad():
        evaluated = test_scaled(x)
        torch.testing.assert_close(evaluated, train_scaled(x), rtol=1e-5, atol=1e-6)
        # unscaled weights would see the training-time activations' expectation only with the scaling
        test_scaled.load_state_dict(train_scaled.state_dict())
        assert not torch.allclose(test_scaled(x), evaluated, rtol=1e-3, atol=1e-4)


def _rnorm_by_the_formula(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """cuda-convnet's kCNorm written out: the window from -size//2 around each pixel, clipped."""
    _, _, h, w = x.shape
    y = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            r0, c0 = max(0, i - size // 2), max(0, j - size // 2)
            r1, c1 = min(h, i - size // 2 + size), min(w, j - size // 2 + size)
            total = (x[:, :, r0:r1, c0:c1] ** 2).sum(dim=(2, 3))
            y[:, :, i, j] = x[:, :, i, j] * (k + alpha / size**2 * total) ** -beta
    return y


@pytest.mark.parametrize("size", [3, 4])
def test_rnorm_is_cuda_convnets_formula_within_each_map(size):
    from splitnet.model.layers import RNorm

    x = torch.randn(2, 3, 7, 6, dtype=torch.float64) * 30
    layer = RNorm(size, 5e-3, 0.75, 1.0)
    torch.testing.assert_close(layer(x), _rnorm_by_the_formula(x, size, 5e-3, 0.75, 1.0))
    x2 = x.clone()
    x2[:, 1] *= 3  # another map changes: this map's output does not
    assert torch.equal(layer(x2)[:, 0], layer(x)[:, 0])


def test_a_rounded_up_average_pool_averages_the_pixels_inside_its_clipped_window():
    from splitnet.model.reference import per_channel_op
    from splitnet.model.spec import load_spec

    spec = load_spec({"name": "m", "input": {"channels": 1, "size": 8}, "layers": [
        {"name": "pool", "op": "avgpool", "kernel": 3, "stride": 2, "ceil": True}]})
    pool = spec.layer("pool")
    x = torch.arange(64, dtype=torch.float64).reshape(1, 1, 8, 8)
    y = per_channel_op(pool)(x)
    assert tuple(y.shape[1:]) == pool.out_shape == (1, 4, 4)
    # the last window starts at 6 and holds rows/columns 6 and 7 only
    assert float(y[0, 0, 3, 3]) == float(x[0, 0, 6:, 6:].mean())
    assert float(y[0, 0, 0, 0]) == float(x[0, 0, :3, :3].mean())
