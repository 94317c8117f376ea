"""The exchange operations: the only code that moves activations or gradients.

Each forward collective is paired with the backward that makes the gradient exact:

| function        | forward                       | backward                               |
| --------------- | ----------------------------- | -------------------------------------- |
| gather          | all-gather shards along dim   | reduce-scatter: sum the partial grads  |
| gather_logits   | all-gather shards along dim   | keep own slice (every rank's loss is   |
|                 |                               | the same, so its gradient already is)  |
| reduce_scatter  | reduce-scatter partial sums   | all-gather the output gradient         |
| all_reduce      | all-reduce partial sums       | identity (same reasoning as logits)    |

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
