"""``build_shard(spec, plan, rank)``: this rank's part of the network, and nothing more.

Every weight slice is drawn directly from the per-channel random streams (see
splitnet/model/seeding.py), so a rank never allocates another rank's rows; a rank that holds
input columns (reduce mode) draws each row whole and keeps its columns, one row at a
time. Exchanges are wired exactly where the plan puts them, through comm.exchange.

While building, the shard follows which input channels the rank holds at each layer
(``held``): a gather widens it to the group's channels; a layer then slices the
channels the plan says it reads (``Shard.reads``) out of what it holds, and an LRN's halo
moves the plan's ``Exchange.moves``. Placement is never decided or recomputed here.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from splitnet.comm.exchange import AllReduce, ExchangeOp, Gather, Halo, Link, ReduceScatter, begin, end, exchange
from splitnet.comm.transport import Transport
from splitnet.errors import SplitnetError
from splitnet.model.layers import GroupLRN, SeededDropout, SegmentLRN, add_layer, grouped_linear
from splitnet.model.reference import initial_bias, initial_weight, per_channel_op
from splitnet.model.spec import Layer, ModelSpec
from splitnet.partition.plan import PSEUDO, Placement, Plan, Shard, split

# Point-to-point tags of halo exchanges: far above a pipeline's (2 per micro-batch), one pair per layer
HALO_TAGS = 1 << 20


class _NoTransport:
    """Stands in for a transport on a shard built for inspection: any exchange is an error."""

    def __getattr__(self, name: str) -> object:
        raise SplitnetError("this shard was built without a transport, but its plan has exchanges; "
                            "pass transport= (a launcher creates one)")


class Weighted(nn.Module):
    """A conv or linear shard: optional input gather, channel slice, local op, optional reduce."""

    def __init__(self, layer: Layer, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                 read: tuple[int, int], pre: Link | None, pre_dim: int, post: Link | None,
                 post_all: bool, out_range: tuple[int, int], rows: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.op, self.stride, self.pad, self.groups = layer.op, layer.stride, layer.pad, groups
        self.read, self.pre, self.pre_dim, self.post, self.post_all = read, pre, pre_dim, post, post_all
        self.out_range, self.channels = out_range, layer.out
        self.rows = rows  # unequal parts of towers: each tower's output rows, computed one by one

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        if self.op == "conv":
            return F.conv2d(x, weight, bias, self.stride, self.pad, 1, groups)
        return grouped_linear(x, weight, bias, groups)

    def _compute(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.rows:
            return self._op(x, self.weight, bias, self.groups)
        towers = x.chunk(len(self.rows), dim=1)
        weights = self.weight.split(list(self.rows))
        biases = bias.split(list(self.rows)) if bias is not None else [None] * len(self.rows)
        return torch.cat([self._op(t, w, b, 1) for t, w, b in zip(towers, weights, biases, strict=True)], dim=1)

    def stages(self) -> list[Stage]:
        """Optional input gather, the local op on the channels read, optional sum of partials."""
        stages: list[Stage] = [Gather(self.pre, self.pre_dim)] if self.pre is not None else []
        stages.append(self._local)
        if self.post is not None and self.post_all:
            stages.append(AllReduce(self.post))
        elif self.post is not None:
            stages += [ReduceScatter(self.post), self._add_bias]
        return stages

    def _local(self, x: torch.Tensor) -> torch.Tensor:
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
        return partial

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y + (self.bias.view(1, -1, 1, 1) if y.dim() == 4 else self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stages(self.stages(), x)


class Weightless(nn.Module):
    """relu / lrn / maxpool / flatten / dropout on this rank's channels (LRN: optionally
    after a halo brings its neighbours' channels, keeping only its own channels afterwards)."""

    def __init__(self, fn: nn.Module, pre: Halo | None = None, keep: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.fn, self.pre, self.keep = fn, pre, keep

    def stages(self) -> list[Stage]:
        if self.pre is None or self.keep is None:
            return [self.fn]
        return [self.pre, self._keep]  # own channels and the window's reach, received point to point

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)[:, self.keep[0]:self.keep[1]]  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stages(self.stages(), x)


class ShardNet(nn.Module):
    """This rank's layers in spec order; state_dict keys match the reference's (``conv1.weight``)."""

    def __init__(self, spec: ModelSpec, plan: Plan, mp_rank: int) -> None:
        super().__init__()
        self.spec, self.plan, self.mp_rank = spec, plan, mp_rank
        self.names: list[str] = []
        self.loss_link: Link | None = None
        self.batch_split = False
        self.split_dropouts: list[str] = []  # dropout layers that see this device's part of the batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_split:  # hybrid: this device's part of the batch, rows [r*B//D, (r+1)*B//D)
            first, end = split(x.shape[0], self.plan.devices, self.mp_rank)
            x = x[first:end]
            for name in self.split_dropouts:
                getattr(self, name).fn.first_row = first
        if min(self.plan.chunks, x.shape[0]) > 1:  # a last evaluation batch may be smaller
            return self._chunked(x)
        for name in self.names:
            x = getattr(self, name)(x)
        return run_stages(self._tail(), x)

    def _tail(self) -> list[Stage]:
        """After the last layer: flatten a spatial output, gather sharded logits."""
        tail: list[Stage] = []
        if self.names and self.names[-1] == self.spec.layers[-1].name:
            tail.append(_flat)
        if self.loss_link is not None:
            tail.append(Gather(self.loss_link, 1, replicated_grad=True))
        return tail

    def _chunked(self, x: torch.Tensor) -> torch.Tensor:
        """The batch in ``plan.chunks`` chunks, each on its own lane, run as a wavefront: a
        chunk computes up to its next exchange and starts it, then the next chunk does the
        same while that exchange travels; only then does the first chunk wait for it.
        Backward (autograd runs nodes newest first) overlaps the gradients' exchanges alike.
        The layers after ``plan.in_chunks()`` run on the whole batch, exchanging at once."""
        k = min(self.plan.chunks, x.shape[0])  # every chunk at least one row
        chunked = self.plan.in_chunks()
        head = [n for n in self.names if n in chunked]
        rest = self.names[len(head):]
        rows = [split(x.shape[0], k, c) for c in range(k)]
        segments: list[tuple[list[tuple[nn.Module, Stage]], ExchangeOp | None]] = [([], None)]
        after = self._tail() if not rest else []
        for module, stage in [(getattr(self, n), st) for n in head for st in getattr(self, n).stages()] \
                + [(self, st) for st in after]:
            if isinstance(stage, ExchangeOp):
                segments[-1] = (segments[-1][0], stage)
                segments.append(([], None))
            else:
                segments[-1][0].append((module, stage))
        values: list[object] = [x[a:b] for a, b in rows]
        started: ExchangeOp | None = None
        for steps, ex in segments:
            for c in range(k):
                v = end(values[c], started, c) if started is not None else values[c]  # type: ignore[arg-type]
                for module, stage in steps:
                    if isinstance(module, Weightless) and isinstance(module.fn, SeededDropout):
                        module.fn.first_row = rows[c][0]  # this chunk's rows of the batch
                    v = stage(v)
                values[c] = begin(v, ex, c) if ex is not None else v
            started = ex
        x = torch.cat(values, dim=0)  # type: ignore[arg-type]
        if not rest:
            return x
        for name in rest:
            x = getattr(self, name)(x)
        return run_stages(self._tail(), x)


Stage = ExchangeOp | Callable[[torch.Tensor], torch.Tensor]


def run_stages(stages: list[Stage], x: torch.Tensor) -> torch.Tensor:
    """Run a module's stages in order, each exchange done in place."""
    for stage in stages:
        x = exchange(x, stage) if isinstance(stage, ExchangeOp) else stage(x)
    return x


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) if x.dim() == 4 else x


def _link(transport: Transport, placement: Placement, mp_rank: int) -> Link | None:
    ex = placement.exchange
    if ex is None:
        return None
    group = ex.group_of(mp_rank)
    if group is None or len(group) < 2:
        return None
    return Link(transport, placement.name, group, ex.parts_of(mp_rank))


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
            if mode == "gather":
                raise SplitnetError(f"layer {layer.name!r}: the plan gathers the input of a weightless layer, "
                                    "which no runtime path does (an LRN reads its neighbours through a halo); "
                                    "re-plan it")
            halo = _halo_of(tr, placement, shard, spec.index(layer.name)) if mode == "halo" else None
            module, held = _weightless(layer, shard, held, seed, halo)
        add_layer(net, layer.name, module)
        net.names.append(layer.name)
        if layer.op == "dropout" and placement.batch_split:
            net.split_dropouts.append(layer.name)
        prev = placement
    loss = plan.placement("loss")
    if loss.exchange is not None and any(mp in g for g in loss.exchange.groups):
        net.loss_link = _link(tr, loss, mp)
    return net.to(transport.device) if transport is not None else net


def _halo_of(transport: Transport, placement: Placement, shard: Shard, index: int) -> Halo | None:
    """This rank's side of an LRN's halo exchange, as the plan's moves state it (None: it
    neither sends nor receives). A move that does not fit the plan's shards is refused:
    computing on other channels than the plan says would be silently wrong."""
    moves = placement.exchange.moves  # type: ignore[union-attr]
    mp = shard.rank
    for src, dst, (a, b) in moves:
        sender, receiver = placement.shard(src), placement.shard(dst)
        if sender is None or receiver is None or not _within((a, b), sender.out) \
                or not _within((a, b), receiver.reads or receiver.out):
            raise SplitnetError(f"layer {placement.name!r}: halo move of channels {(a, b)} from rank {src} to "
                                f"{dst} lies outside what the sender holds or the receiver reads; the plan is "
                                "inconsistent (re-plan it)")
    sends = tuple((dst, ch) for src, dst, ch in moves if src == mp)
    recvs = tuple((src, ch) for src, dst, ch in moves if dst == mp)
    # the halo joins what it receives around the own channels, in the plan's order
    (o0, o1), reads = shard.out, shard.reads or shard.out
    chain = [ch for _, ch in recvs if ch[0] < o0] + [shard.out] + [ch for _, ch in recvs if ch[0] >= o1]
    if any(p[1] != q[0] for p, q in pairwise(chain)) or (chain[0][0], chain[-1][1]) != reads:
        raise SplitnetError(f"layer {placement.name!r}: rank {mp} reads channels {reads} but the halo moves "
                            f"bring it {[ch for _, ch in recvs]} beside its own {shard.out}; the plan is "
                            "inconsistent (re-plan it)")
    if not sends and not recvs:
        return None
    return Halo(transport, placement.name, shard.out, sends, recvs, HALO_TAGS + index)


def _within(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
    return outer[0] <= inner[0] < inner[1] <= outer[1]


def _weighted(spec: ModelSpec, layer: Layer, shard: Shard, held: tuple[int, int], seed: int,
              link: Link | None, mode: str | None, summed: bool) -> Weighted:
    out0, out1 = shard.out
    need = shard.reads or (0, layer.in_shape[0])
    if shard.cols is not None:  # reduce mode: all output rows (or its tower's), its input columns
        rows0, rows1 = shard.weight_rows(layer.out)
        weight = initial_weight(spec, layer, seed, range(rows0, rows1), cols=shard.cols)
        groups, uneven = 1, ()
    else:
        weight = initial_weight(spec, layer, seed, range(out0, out1))
        if layer.connect == "full":
            groups, uneven = 1, ()
        else:
            per_out = layer.out // layer.groups
            # each tower's rows of this shard: one grouped op when they are equal, else one op per tower
            rows = tuple(min(out1, (g + 1) * per_out) - max(out0, g * per_out)
                         for g in range(out0 // per_out, -(-out1 // per_out)))
            groups, uneven = (len(rows), ()) if len(set(rows)) == 1 else (1, rows)
    if not (held[0] <= need[0] and need[1] <= held[1]):
        raise SplitnetError(f"layer {layer.name!r}: the rank reads input channels {need} but holds {held}; "
                            "the plan is inconsistent")
    read = (need[0] - held[0], need[1] - held[0])
    pre = link if mode in ("gather", "batch") else None
    post = link if mode == "reduce" else None
    return Weighted(layer, weight, initial_bias(layer, range(out0, out1)), groups, read, pre,
                    0 if mode == "batch" else 1, post, summed, (out0, out1), uneven)


def _weightless(layer: Layer, shard: Shard, held: tuple[int, int], seed: int,
                halo: Halo | None) -> tuple[nn.Module, tuple[int, int]]:
    c = layer.in_shape[0]
    per_group = c // layer.groups
    if layer.op == "relu":
        return Weightless(nn.ReLU()), held
    if layer.op in ("rnorm", "maxpool", "avgpool"):
        return Weightless(per_channel_op(layer)), held
    if layer.op == "flatten":
        spatial = layer.in_shape[1] * layer.in_shape[2]
        return Weightless(nn.Flatten()), (held[0] * spatial, held[1] * spatial)
    if layer.op == "dropout":
        return Weightless(SeededDropout(layer.p, seed, layer.name, (held[0], held[1], c), layer.scale)), held
    if layer.op == "lrn":
        if halo is not None:  # ours widened by the window's reach the halo brings; keep ours
            out, (lo, hi) = shard.out, shard.reads or shard.out
            # beyond a tower's edge the window reads zeros, as the per-group reference does
            cuts = [lo, *range((lo // per_group + 1) * per_group, hi, per_group), hi]
            widths = tuple(b - a for a, b in zip(cuts, cuts[1:], strict=False))
            lrn: nn.Module = GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, 1) if len(widths) == 1 \
                else SegmentLRN(layer.size, layer.alpha, layer.beta, layer.k, widths)
            return Weightless(lrn, halo, (out[0] - lo, out[1] - lo)), out
        width = held[1] - held[0]
        if layer.size == 1:  # a window of one channel never crosses a group (the plan has no exchange)
            return Weightless(GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, 1)), held
        if held[0] % per_group or width % per_group:
            raise SplitnetError(f"layer {layer.name!r}: channels {held} split a group of {per_group} "
                                "but the plan has no exchange here")
        return Weightless(GroupLRN(layer.size, layer.alpha, layer.beta, layer.k, width // per_group)), held
    raise AssertionError(layer.op)
