"""``build_shard(spec, plan, rank)``: this rank's part of the network, and nothing more.

Every weight slice is drawn directly from the per-channel random streams (see
splitnet/seeding.py), so a rank never allocates another rank's rows; a rank that holds
input columns (reduce mode) draws each row whole and keeps its columns, one row at a
time. Exchanges are wired exactly where the plan puts them, through comm.exchange.

While building, the shard follows which input channels the rank holds at each layer
(``held``): a gather widens it to the group's channels; a layer then slices the
channels it reads out of what it holds. Placement is never decided here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitnet.comm.exchange import Link, all_reduce, gather, gather_logits, reduce_scatter
from splitnet.comm.transport import Transport
from splitnet.errors import SplitnetError
from splitnet.layers import GroupLRN, SeededDropout, add_layer, grouped_linear
from splitnet.partition.plan import PSEUDO, Placement, Plan, Shard
from splitnet.reference import initial_bias, initial_weight
from splitnet.spec import Layer, ModelSpec


class _NoTransport:
    """Stands in for a transport on a shard built for inspection: any exchange is an error."""

    def __getattr__(self, name: str) -> object:
        raise SplitnetError("this shard was built without a transport, but its plan has exchanges; "
                            "pass transport= (a launcher creates one)")


class Weighted(nn.Module):
    """A conv or linear shard: optional input gather, channel slice, local op, optional reduce."""

    def __init__(self, layer: Layer, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                 read: tuple[int, int], pre: Link | None, pre_dim: int, post: Link | None,
                 post_all: bool, out_range: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.op, self.stride, self.pad, self.groups = layer.op, layer.stride, layer.pad, groups
        self.read, self.pre, self.pre_dim, self.post, self.post_all = read, pre, pre_dim, post, post_all
        self.out_range, self.channels = out_range, layer.out

    def _compute(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.op == "conv":
            return F.conv2d(x, self.weight, bias, self.stride, self.pad, 1, self.groups)
        return grouped_linear(x, self.weight, bias, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = gather(x, self.pre, self.pre_dim)
        a, b = self.read
        if (a, b) != (0, x.shape[1]):
            x = x[:, a:b]
        if self.post is None:
            return self._compute(x, self.bias)
        partial = self._compute(x, None)
        if self.post_all:  # each rank adds its bias rows before the sum: the sum holds every bias once
            o0, o1 = self.out_range
            bias = F.pad(self.bias, (o0, self.channels - o1))
            partial = partial + (bias.view(1, -1, 1, 1) if partial.dim() == 4 else bias)
            return all_reduce(partial, self.post)
        y = reduce_scatter(partial, self.post)
        return y + (self.bias.view(1, -1, 1, 1) if y.dim() == 4 else self.bias)


class Weightless(nn.Module):
    """relu / lrn / maxpool / flatten / dropout on this rank's channels (LRN: optionally
    after gathering the rest of its tower, keeping only its own channels afterwards)."""

    def __init__(self, fn: nn.Module, pre: Link | None = None, keep: tuple[int, int] | None = None,
                 window: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.fn, self.pre, self.keep, self.window = fn, pre, keep, window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is None or self.keep is None:
            return self.fn(x)
        # Only the own channels and the window's reach on either side go on: a copy, so the
        # gathered tower is freed at once and backward keeps (own + halo) channels, not the tower.
        tower = gather(x, self.pre, 1)
        lo = max(0, self.keep[0] - self.window[0])
        hi = min(tower.shape[1], self.keep[1] + self.window[1])
        y = self.fn(tower[:, lo:hi].contiguous())
        return y[:, self.keep[0] - lo:self.keep[1] - lo]


class ShardNet(nn.Module):
    """This rank's layers in spec order; state_dict keys match the reference's (``conv1.weight``)."""

    def __init__(self, spec: ModelSpec, plan: Plan, mp_rank: int) -> None:
        super().__init__()
        self.spec, self.plan, self.mp_rank = spec, plan, mp_rank
        self.names: list[str] = []
        self.loss_link: Link | None = None
        self.batch_split = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_split:  # hybrid: this device's slice of the batch
            x = x.chunk(self.plan.devices)[self.mp_rank]
        for name in self.names:
            x = getattr(self, name)(x)
        if x.dim() == 4 and self.names and self.names[-1] == self.spec.layers[-1].name:
            x = x.flatten(1)
        if self.loss_link is not None:
            x = gather_logits(x, self.loss_link)
        return x


def _link(transport: Transport, placement: Placement, mp_rank: int) -> Link | None:
    ex = placement.exchange
    if ex is None:
        return None
    group = ex.group_of(mp_rank)
    return None if group is None or len(group) < 2 else Link(transport, placement.name, group)


def build_shard(spec: ModelSpec, plan: Plan, rank: int, seed: int = 0,
                transport: Transport | None = None) -> ShardNet:
    """Build global rank ``rank``'s shard (every replica holds the same one), on the
    transport's device (the CPU without a transport)."""
    if plan.model != spec.name:
        raise SplitnetError(f"the plan is for model {plan.model!r}, the spec is {spec.name!r}")
    mp = rank % plan.devices
    net = ShardNet(spec, plan, mp)
    tr: Transport = transport if transport is not None else _NoTransport()  # type: ignore[assignment]
    layers = [p for p in plan.layers if p.op not in PSEUDO]
    held: tuple[int, int] | None = None
    prev: Placement | None = None
    for placement in layers:
        shard = placement.shard(mp)
        if shard is None:
            prev = placement
            continue
        layer = spec.layer(placement.name)
        if held is None:  # the first layer this rank computes reads a whole (replicated or received) input
            held = (0, layer.in_shape[0])
            net.batch_split = placement.batch_split
        link = _link(tr, placement, mp)
        mode = placement.exchange.mode if placement.exchange is not None else None
        if mode == "gather" and link is not None and prev is not None:
            first, last = prev.shard(link.ranks[0]), prev.shard(link.ranks[-1])
            held = (first.out[0], last.out[1])  # type: ignore[union-attr]
        module: nn.Module
        if layer.weighted:
            summed = mode == "reduce" and placement.exchange.collective == "all_reduce"  # type: ignore[union-attr]
            module = _weighted(spec, layer, shard, held, seed, link, mode, summed)
            held = (0, layer.out) if summed else shard.out
        else:
            module, held = _weightless(layer, shard.out, held, seed, link if mode == "gather" else None,
                                       placement.batch_split, mp)
        add_layer(net, layer.name, module)
        net.names.append(layer.name)
        prev = placement
    loss = plan.placement("loss")
    if loss.exchange is not None and any(mp in g for g in loss.exchange.groups):
        net.loss_link = _link(tr, loss, mp)
    return net.to(transport.device) if transport is not None else net


def _weighted(spec: ModelSpec, layer: Layer, shard: Shard, held: tuple[int, int], seed: int,
              link: Link | None, mode: str | None, summed: bool) -> Weighted:
    out0, out1 = shard.out
    c_in = layer.in_shape[0]
    if shard.cols is not None:  # reduce mode: all output rows, this rank's input columns
        c0, c1 = shard.cols
        weight = initial_weight(spec, layer, seed, cols=(c0, c1))
        need, groups = (c0, c1), 1
    else:
        weight = initial_weight(spec, layer, seed, range(out0, out1))
        if layer.connect == "full":
            need, groups = (0, c_in), 1
        else:
            per_out, per_in = layer.out // layer.groups, c_in // layer.groups
            g0, g1 = out0 // per_out, -(-out1 // per_out)
            need = (g0 * per_in, g1 * per_in)
            groups = g1 - g0 if (out1 - out0) == (g1 - g0) * per_out else 1
    if not (held[0] <= need[0] and need[1] <= held[1]):
        raise SplitnetError(f"layer {layer.name!r}: the rank reads input channels {need} but holds {held}; "
                            "the plan is inconsistent")
    read = (need[0] - held[0], need[1] - held[0])
    pre = link if mode in ("gather", "batch") else None
    post = link if mode == "reduce" else None
    return Weighted(layer, weight, initial_bias(layer, range(out0, out1)), groups, read, pre,
                    0 if mode == "batch" else 1, post, summed, (out0, out1))


def _weightless(layer: Layer, out: tuple[int, int], held: tuple[int, int], seed: int, link: Link | None,
                batch_split: bool, mp: int) -> tuple[nn.Module, tuple[int, int]]:
    c = layer.in_shape[0]
    per_group = c // layer.groups
    if layer.op == "relu":
        return Weightless(nn.ReLU()), held
    if layer.op == "maxpool":
        return Weightless(nn.MaxPool2d(layer.kernel, layer.stride, layer.pad)), held
    if layer.op == "flatten":
        spatial = layer.in_shape[1] * layer.in_shape[2]
        return Weightless(nn.Flatten()), (held[0] * spatial, held[1] * spatial)
    if layer.op == "dropout":
        return Weightless(SeededDropout(layer.p, seed, layer.name, (held[0], held[1], c),
                                        rows_part=mp if batch_split else 0)), held
    if layer.op == "lrn":
        if link is not None:  # this tower spans several devices: normalise the whole tower, keep ours
            lrn = GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, 1)
            tower0 = (out[0] // per_group) * per_group
            # channel c's window is [c - size//2, c + (size-1)//2] (torch's padding); beyond the
            # tower's edge it reads zeros, as the per-group reference does
            window = (layer.size // 2, (layer.size - 1) // 2)
            return Weightless(lrn, link, (out[0] - tower0, out[1] - tower0), window), out
        width = held[1] - held[0]
        if layer.size == 1:  # a window of one channel never crosses a group (the plan has no exchange)
            return Weightless(GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, 1)), held
        if held[0] % per_group or width % per_group:
            raise SplitnetError(f"layer {layer.name!r}: channels {held} split a group of {per_group} "
                                "but the plan has no exchange here")
        return Weightless(GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, width // per_group)), held
    raise AssertionError(layer.op)
