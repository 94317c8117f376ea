"""The exchange operations: the only code that moves activations or gradients.

Each forward collective is paired with the backward that makes the gradient exact:

| function        | forward                       | backward                               |
| --------------- | ----------------------------- | -------------------------------------- |
| gather          | all-gather shards along dim   | reduce-scatter: sum the partial grads  |
| gather_logits   | all-gather shards along dim   | keep own slice (every rank's loss is   |
|                 |                               | the same, so its gradient already is)  |
| reduce_scatter  | reduce-scatter partial sums   | all-gather the output gradient         |
| all_reduce      | all-reduce partial sums       | identity (same reasoning as logits)    |
| halo            | receive neighbours' edge      | send the halo's gradient back; add the |
|                 | channels, point to point      | gradients of the edges sent            |

plus point-to-point activation/gradient transfer for pipeline stages (and, in
comm/buckets.py, the gradient all-reduce for replicated weights). Layers call these through a ``Link`` bound to one
exchange point of the plan; nothing else in splitnet issues a collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.profiler import record_function

from splitnet.comm.transport import Transport


@dataclass(frozen=True)
class Link:
    """One exchange point: the transport, the layer it belongs to, the ranks that talk, and
    each rank's part along the exchanged dimension (``None``: equal parts)."""

    transport: Transport
    layer: str
    ranks: tuple[int, ...]
    parts: tuple[int, ...] | None = None

    @property
    def index(self) -> int:
        return self.ranks.index(self.transport.mp_rank)

    def own(self, size: int) -> tuple[int, int]:
        """(offset, length) of this rank's part in the joined tensor (``size``: its part)."""
        if self.parts is None:
            return self.index * size, size
        return sum(self.parts[:self.index]), self.parts[self.index]


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, link: Link, dim: int, replicated_grad: bool) -> torch.Tensor:
        ctx.link, ctx.dim, ctx.replicated_grad, ctx.size = link, dim, replicated_grad, x.shape[dim]
        return link.transport.all_gather(x, link.ranks, link.layer, "fwd", dim, link.parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        link: Link = ctx.link
        if ctx.replicated_grad:
            start, length = link.own(ctx.size)
            return grad.narrow(ctx.dim, start, length).contiguous(), None, None, None
        return (link.transport.reduce_scatter(grad, link.ranks, link.layer, "bwd", ctx.dim, link.parts),
                None, None, None)


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, link: Link) -> torch.Tensor:
        ctx.link = link
        return link.transport.reduce_scatter(x, link.ranks, link.layer, "fwd", 1, link.parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        link: Link = ctx.link
        return link.transport.all_gather(grad, link.ranks, link.layer, "bwd", 1, link.parts), None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, link: Link) -> torch.Tensor:
        t = link.transport
        with record_function(f"splitnet.exchange:{link.layer}"):  # the sum's buffer is an exchange buffer
            summed = x.clone()
        return t.all_reduce(summed, t.group(link.ranks), len(link.ranks), link.layer, "fwd")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return grad, None


@dataclass(frozen=True)
class Halo:
    """One LRN's halo exchange, from this rank's side: the channels it holds (``own``), the
    slices other ranks read from it (``sends``: (rank, channels)) and those it reads from
    them (``recvs``), every range in the layer's channel numbering. ``tag`` keeps this
    layer's messages apart from any other's between the same two ranks."""

    transport: Transport
    layer: str
    own: tuple[int, int]
    sends: tuple[tuple[int, tuple[int, int]], ...]
    recvs: tuple[tuple[int, tuple[int, int]], ...]
    tag: int


def _halo_swap(t: Transport, outgoing: list[tuple[int, torch.Tensor]], incoming: list[tuple[int, tuple[int, ...]]],
               tag: int, layer: str, direction: str) -> list[torch.Tensor]:
    """Start every send, then receive each incoming slice (every rank sends before it waits,
    so no pair can block the other), then wait for the sends."""
    works = [t.send(x, dst, tag) for dst, x in outgoing]
    got = [t.recv(shape, src, tag, layer, direction) for src, shape in incoming]
    for work in works:
        t.wait(work, layer, "send")
    return got


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, halo: Halo) -> torch.Tensor:
        ctx.halo = halo
        o0 = halo.own[0]
        outgoing = [(dst, x[:, a - o0:b - o0]) for dst, (a, b) in halo.sends]
        incoming = [(src, (x.shape[0], b - a, *x.shape[2:])) for src, (a, b) in halo.recvs]
        got = _halo_swap(halo.transport, outgoing, incoming, 2 * halo.tag, halo.layer, "fwd")
        left = [g for g, (_, (a, _b)) in zip(got, halo.recvs, strict=True) if a < o0]
        right = [g for g, (_, (a, _b)) in zip(got, halo.recvs, strict=True) if a >= halo.own[1]]
        return torch.cat([*left, x, *right], dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        halo: Halo = ctx.halo
        o0, o1 = halo.own
        lo = min([o0, *(a for _, (a, _b) in halo.recvs)])
        outgoing = [(src, grad[:, a - lo:b - lo]) for src, (a, b) in halo.recvs]
        incoming = [(dst, (grad.shape[0], b - a, *grad.shape[2:])) for dst, (a, b) in halo.sends]
        got = _halo_swap(halo.transport, outgoing, incoming, 2 * halo.tag + 1, halo.layer, "bwd")
        own = grad[:, o0 - lo:o1 - lo].clone()
        for g, (_, (a, b)) in zip(got, halo.sends, strict=True):
            own[:, a - o0:b - o0] += g
        return own, None


def halo(x: torch.Tensor, exchange: Halo) -> torch.Tensor:
    """``x`` (this rank's channels) widened by the neighbours' channels its window reads."""
    return _Halo.apply(x, exchange)


def gather(x: torch.Tensor, link: Link, dim: int = 1) -> torch.Tensor:
    """All-gather the shards of ``x`` along ``dim`` (channels, or the batch for hybrid)."""
    return _Gather.apply(x, link, dim, False)


def gather_logits(x: torch.Tensor, link: Link) -> torch.Tensor:
    """All-gather sharded logits for a loss that every rank computes identically."""
    return _Gather.apply(x, link, 1, True)


def reduce_scatter(x: torch.Tensor, link: Link) -> torch.Tensor:
    """Sum partial outputs over the ranks; each keeps its own channel shard."""
    return _ReduceScatter.apply(x, link)


def all_reduce(x: torch.Tensor, link: Link) -> torch.Tensor:
    """Sum partial outputs over the ranks; every rank keeps the whole result."""
    return _AllReduce.apply(x, link)


def send_activation(x: torch.Tensor, transport: Transport, dst: int, tag: int) -> Any:
    return transport.send(x.detach(), dst, tag)


def recv_activation(shape: tuple[int, ...], transport: Transport, src: int, tag: int,
                    layer: str) -> torch.Tensor:
    return transport.recv(shape, src, tag, layer, "fwd")


def send_gradient(grad: torch.Tensor, transport: Transport, dst: int, tag: int) -> Any:
    return transport.send(grad, dst, tag)


def recv_gradient(shape: tuple[int, ...], transport: Transport, src: int, tag: int,
                  layer: str) -> torch.Tensor:
    return transport.recv(shape, src, tag, layer, "bwd")


def share_metrics(values: torch.Tensor, transport: Transport, src: int) -> torch.Tensor:
    """Evaluation counts from the model-parallel rank that holds the logits to the others
    (a pipeline's earlier stages need the validation error for the lr schedule).
    Metered as layer "eval"; it never runs inside a training step."""
    devices = transport.mesh.devices
    if devices == 1:
        return values
    shared = values.to(transport.device, copy=True)  # NCCL only reduces CUDA tensors
    if transport.mp_rank != src:
        shared.zero_()
    return transport.all_reduce(shared, transport.group(tuple(range(devices))), devices, "eval", "fwd").cpu()


def combine_metrics(values: torch.Tensor, transport: Transport, src: int) -> torch.Tensor:
    """Evaluation counts summed over the replicas, on every rank: each replica scored its
    own share of the validation set. ``share_metrics`` within each model-parallel group,
    then an all-reduce over the data-parallel group; metered as layer "eval"."""
    shared = share_metrics(values, transport, src)
    replicas = transport.mesh.replicas
    if replicas == 1:
        return shared
    total = shared.to(transport.device, copy=True)
    return transport.all_reduce(total, transport.replica_group, replicas, "eval", "fwd").cpu()
