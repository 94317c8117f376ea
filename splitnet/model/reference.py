"""The whole network on one device: the ground truth every split is held against."""

from __future__ import annotations

import torch
from torch import nn

from splitnet.model.layers import GroupedLinear, GroupLRN, RNorm, SeededDropout, add_layer
from splitnet.model.seeding import draw_rows
from splitnet.model.spec import Layer, ModelSpec


def initial_weight(spec: ModelSpec, layer: Layer, seed: int, rows: range | None = None,
                   cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows ``rows`` (default: all), input columns ``cols`` (default: all) of a layer's initial
    weight: a pure function of (spec, seed, layer)."""
    rows = range(layer.out) if rows is None else rows
    return draw_rows(seed, layer.name, rows, layer.weight_shape[1:], spec.std_of(layer), cols)


def initial_bias(layer: Layer, rows: range | None = None) -> torch.Tensor:
    rows = range(layer.out) if rows is None else rows
    return torch.full((len(rows),), layer.bias_init)


def build_layer(spec: ModelSpec, layer: Layer, seed: int) -> nn.Module:
    """One whole layer as a torch module, with its initial weights."""
    if layer.op == "conv":
        conv = nn.Conv2d(layer.in_shape[0], layer.out, layer.kernel, layer.stride, layer.pad,
                         groups=layer.groups if layer.connect == "group" else 1, device="meta")
        conv.weight = nn.Parameter(initial_weight(spec, layer, seed))
        conv.bias = nn.Parameter(initial_bias(layer))
        return conv
    if layer.op == "linear":
        return GroupedLinear(initial_weight(spec, layer, seed), initial_bias(layer),
                             layer.groups if layer.connect == "group" else 1)
    if layer.op == "relu":
        return nn.ReLU()
    if layer.op == "lrn":
        return GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, layer.groups)
    if layer.op in ("rnorm", "maxpool", "avgpool"):
        return per_channel_op(layer)
    if layer.op == "dropout":
        c = layer.in_shape[0]
        return SeededDropout(layer.p, seed, layer.name, (0, c, c), layer.scale)
    if layer.op == "flatten":
        return nn.Flatten()
    raise AssertionError(layer.op)


def per_channel_op(layer: Layer) -> nn.Module:
    """A weightless op that reads each channel on its own: the same module on any channels."""
    if layer.op == "rnorm":
        return RNorm(layer.size, layer.alpha, layer.beta, layer.k)
    if layer.op == "maxpool":
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.pad, ceil_mode=layer.ceil)
    if layer.op == "avgpool":
        # a window clipped at the edge (ceil) averages the pixels inside, as cuda-convnet's AvgPooler
        return nn.AvgPool2d(layer.kernel, layer.stride, layer.pad, ceil_mode=layer.ceil)
    raise AssertionError(layer.op)


class ReferenceNet(nn.Sequential):
    """The spec's layers in order; state_dict keys are ``<layer>.weight`` / ``<layer>.bias``."""

    def __init__(self, spec: ModelSpec, seed: int) -> None:
        super().__init__()
        self.spec = spec
        for layer in spec.layers:
            add_layer(self, layer.name, build_layer(spec, layer, seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(1)


def build_reference(spec: ModelSpec, seed: int = 0) -> ReferenceNet:
    return ReferenceNet(spec, seed)
