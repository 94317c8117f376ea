"""Layer ops torch does not ship in the form the 2012 network needs.

Used by the reference model and by the split shards alike, so both compute the
same thing: LRN that never crosses a group boundary, cuda-convnet's response
normalisation within each map, a grouped (block-diagonal) linear layer, and a
dropout whose mask is a function of (seed, layer, step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitnet.model.seeding import dropout_keep


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """``F.local_response_norm`` across dim 1, the same values and gradients bit for bit
    (float32 on CPU: tests/test_model_layers.py), in under half its time.

    torch sums each channel's window with ``avg_pool3d`` over a padded, five-dimensional
    view of the squares; here the window is the sum of ``size`` shifted slices of the padded
    squares, added in the pool's order and divided by ``size`` as it does. The pool's
    forward and backward were 40-60% of a training step of the digit nets on one CPU thread.
    Under autocast torch's own function runs (it computes the pool in float32 there)."""
    if x.dim() < 3 or torch.is_autocast_enabled(x.device.type):
        return F.local_response_norm(x, size, alpha, beta, k)
    channels = x.shape[1]
    padded = F.pad(x * x, (0, 0) * (x.dim() - 2) + (size // 2, (size - 1) // 2))
    first = padded.narrow(1, 0, channels)
    window = first.clone() if size == 1 else first + padded.narrow(1, 1, channels)
    for i in range(2, size):
        window.add_(padded.narrow(1, i, channels))  # in place: a fresh tensor nothing else holds
    return x / window.div_(size).mul_(alpha).add_(k).pow(beta)


class GroupLRN(nn.Module):
    """Local response normalisation within each of ``groups`` contiguous channel groups.

    On the 2012 GPUs each tower normalised only its own channels; an LRN window over
    a whole grouped tensor would mix neighbours across the tower boundary.
    torch's LRN divides alpha by ``size`` (as cuda-convnet2 does); so do we.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, groups: int) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        rest = x.shape[2:] or (1,)
        per_group = x.reshape(b * self.groups, c // self.groups, *rest)
        y = lrn(per_group, self.size, self.alpha, self.beta, self.k)
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"


class SegmentLRN(nn.Module):
    """LRN over consecutive channel segments of given widths, each on its own (the parts of
    towers a device holds when its channels cross a tower boundary off a device boundary)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.widths = size, alpha, beta, k, widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = (x if x.dim() > 2 else x.unsqueeze(-1)).split(list(self.widths), dim=1)
        y = torch.cat([lrn(part, self.size, self.alpha, self.beta, self.k) for part in parts],
                      dim=1)
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, widths={self.widths}"


class RNorm(nn.Module):
    """cuda-convnet's ``rnorm`` layer: response normalisation within each map, over
    ``size`` x ``size`` neighbourhoods (not across maps, as LRN):

        y[c, i, j] = x[c, i, j] * (k + alpha / size^2 * sum x[c, i', j']^2) ** -beta

    the sum over the window rows i - size//2 .. i - size//2 + size - 1 (columns alike) that
    lie inside the map. Source: cuda-convnet's ``layer.py`` (the parser divides the cfg's
    ``scale`` by size^2, so ``alpha`` here is the cfg's ``scale``) and ``kCNorm_*`` in
    ``conv_util.cu`` (window from ``-sizeX/2`` around the pixel, clipped to the image;
    denominator ``1 + scale * sum``, later ``minDiv + ...``, raised to ``-powScale``).
    Each channel reads only itself, so a channel split needs no exchange.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.size // 2
        after = self.size - 1 - before
        squares = F.pad(x * x, (before, after, before, after))
        # the zero padding stands for the pixels outside the map, which the sum skips
        mean = F.avg_pool2d(squares, self.size, stride=1)
        return x * (self.k + self.alpha * mean).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class GroupedLinear(nn.Module):
    """A linear layer whose ``groups`` output blocks each read only their own input block."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_linear(x, self.weight, self.bias, self.groups)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   groups: int) -> torch.Tensor:
    """y = x W^T + b with a block-diagonal W of ``groups`` blocks (weight: out x in/groups)."""
    if groups == 1:
        return F.linear(x, weight, bias)
    out, per = weight.shape
    blocks = weight.view(groups, out // groups, per)
    y = torch.einsum("bgi,goi->bgo", x.reshape(x.shape[0], groups, per), blocks)
    y = y.reshape(x.shape[0], out)
    return y if bias is None else y + bias


class SeededDropout(nn.Module):
    """Dropout whose mask is drawn full-width from (seed, layer, step) and then sliced.

    ``channels`` is this module's slice of the full feature dimension (start, stop, total);
    ``set_step`` tells it the step and which rows of the full batch it is computing, so
    a rank holding channels 48..95 of rows 32..63 applies the reference's mask there.
    ``first_row``: where this module's rows start within those (hybrid conv layers, where
    each device takes its own part of the batch; the shard sets it every forward).
    ``scale``: ``train`` divides the kept units by 1 - p while training (inverted dropout:
    evaluation passes everything through); ``test`` keeps them as they are and multiplies
    every output by 1 - p in evaluation, as the paper did (section 4.2: "multiply the
    outputs by 0.5"). Both are the same function up to the next layer's weights' scale.
    """

    def __init__(self, p: float, seed: int, layer: str, channels: tuple[int, int, int],
                 scale: str = "train") -> None:
        super().__init__()
        self.p, self.seed, self.layer, self.channels, self.scale = p, seed, layer, channels, scale
        self.first_row = 0
        self.step, self.row_offset, self.full_batch = 0, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if not self.training:
            return x * (1.0 - self.p) if self.scale == "test" else x
        start, stop, total = self.channels
        first = self.row_offset + self.first_row
        rows = self.full_batch or first + x.shape[0]
        keep = dropout_keep(self.seed, self.layer, self.step, (rows, total, *x.shape[2:]), self.p)
        # backward keeps the mask: only this module's slice of it, one byte an element
        keep = keep[first:first + x.shape[0], start:stop].to(x.device, copy=True)
        return x * keep if self.scale == "test" else x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, layer={self.layer!r}, channels={self.channels}"


def add_layer(parent: nn.Module, name: str, module: nn.Module) -> None:
    """Register a spec layer under its own name, so parameters are ``<layer>.weight``."""
    try:
        parent.add_module(name, module)
    except KeyError as exc:
        from splitnet.model.spec import SpecError

        raise SpecError(f"layer {name!r}: the name clashes with an attribute of a torch module; "
                        "rename the layer") from exc


def set_step(model: nn.Module, step: int, row_offset: int = 0, full_batch: int = 0) -> None:
    """Tell every seeded dropout of ``model`` the step and its rows of the full batch."""
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.step, module.row_offset, module.full_batch = step, row_offset, full_batch
