"""The exchange operations: the only code that moves activations or gradients.

Each kind is an ``ExchangeOp`` whose forward transfer is paired with the backward that
makes the gradient exact:

| op                          | forward                       | backward                               |
| --------------------------- | ----------------------------- | -------------------------------------- |
| Gather                      | all-gather shards along dim   | reduce-scatter: sum the partial grads  |
| Gather(replicated_grad)     | all-gather the logits         | keep own slice (every rank's loss is   |
|                             |                               | the same, so its gradient already is)  |
| ReduceScatter               | reduce-scatter partial sums   | all-gather the output gradient         |
| AllReduce                   | all-reduce partial sums       | identity (same reasoning as logits)    |
| Halo                        | receive neighbours' edge      | send the halo's gradient back; add the |
|                             | channels, point to point      | gradients of the edges sent            |

plus, outside this file, a pipeline stage's activations and gradients, handed to the next
stage with the transport's point-to-point ``send``/``recv`` (runtime/schedule.py), and the
gradient all-reduce for replicated weights (comm/buckets.py). A shard's layers list
their ops, each bound to one exchange point of the plan (a ``Link``); nothing else in
splitnet issues a collective.

Every op has separate start and finish halves, so it can run now (``exchange``), or be
split around other work (``begin`` ... ``end``): a chunked columns step starts one chunk's
exchange, computes the next chunk, then finishes the first, and backward runs the same
overlap in reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.profiler import record_function

from splitnet.comm.transport import Pending, Transport


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


class ExchangeOp:
    """One kind of exchange, in four halves: ``start``/``finish`` move the forward tensor,
    ``start_back``/``finish_back`` its gradient. A start returns what its finish needs
    (a ``Pending``, or the result itself when nothing has to travel). ``lane``: which copy
    of the process groups (and of point-to-point tags) carries it; ``like``: the forward
    input's shape, which some backwards need."""

    layer: str

    def start(self, x: torch.Tensor, lane: int) -> Any:
        raise NotImplementedError

    def finish(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def start_back(self, grad: torch.Tensor, lane: int, like: torch.Size) -> Any:
        raise NotImplementedError

    def finish_back(self, state: Any) -> torch.Tensor:
        raise NotImplementedError


def _complete(t: Transport, state: Pending | torch.Tensor) -> torch.Tensor:
    return t.complete(state) if isinstance(state, Pending) else state


@dataclass(frozen=True)
class _Collective(ExchangeOp):
    """An exchange over a ``Link``'s group: each half that travels is a ``Pending`` the
    transport completes; a half that does not is its result already."""

    link: Link

    @property
    def layer(self) -> str:  # type: ignore[override]
        return self.link.layer

    def finish(self, state: Pending | torch.Tensor) -> torch.Tensor:
        return _complete(self.link.transport, state)

    def finish_back(self, state: Pending | torch.Tensor) -> torch.Tensor:
        return _complete(self.link.transport, state)


@dataclass(frozen=True)
class Gather(_Collective):
    """All-gather along ``dim``; backward sums the partial gradients (reduce-scatter), or
    with ``replicated_grad`` keeps this rank's slice (every rank's loss is the same)."""

    dim: int = 1
    replicated_grad: bool = False

    def start(self, x: torch.Tensor, lane: int) -> Pending:
        link = self.link
        return link.transport.start_all_gather(x, link.ranks, link.layer, "fwd", self.dim, link.parts, lane)

    def start_back(self, grad: torch.Tensor, lane: int, like: torch.Size) -> Pending | torch.Tensor:
        link = self.link
        if self.replicated_grad:
            start, length = link.own(like[self.dim])
            return grad.narrow(self.dim, start, length).contiguous()
        return link.transport.start_reduce_scatter(grad, link.ranks, link.layer, "bwd", self.dim, link.parts, lane)


@dataclass(frozen=True)
class ReduceScatter(_Collective):
    """Sum partial outputs over the ranks, each keeping its own channels; backward all-gathers."""

    def start(self, x: torch.Tensor, lane: int) -> Pending:
        link = self.link
        return link.transport.start_reduce_scatter(x, link.ranks, link.layer, "fwd", 1, link.parts, lane)

    def start_back(self, grad: torch.Tensor, lane: int, like: torch.Size) -> Pending:
        link = self.link
        return link.transport.start_all_gather(grad, link.ranks, link.layer, "bwd", 1, link.parts, lane)


@dataclass(frozen=True)
class AllReduce(_Collective):
    """Sum partial outputs over the ranks, every rank keeping the whole; backward is the
    identity (the same reasoning as the logits')."""

    def start(self, x: torch.Tensor, lane: int) -> Pending:
        t, link = self.link.transport, self.link
        with record_function(f"splitnet.exchange:{link.layer}"):  # the sum's buffer is an exchange buffer
            summed = x.to(t.dtype, copy=True)
        work = t.start_all_reduce(summed, t.group(link.ranks, lane), len(link.ranks), link.layer, "fwd", lane)
        return Pending(work, link.layer, "all_reduce", lambda: summed)

    def start_back(self, grad: torch.Tensor, lane: int, like: torch.Size) -> torch.Tensor:
        return grad


@dataclass(frozen=True)
class Halo(ExchangeOp):
    """One LRN's halo exchange, from this rank's side: the channels it holds (``own``), the
    slices other ranks read from it (``sends``: (rank, channels)) and those it reads from
    them (``recvs``), every range in the layer's channel numbering. ``tag`` keeps this
    layer's messages apart from any other's between the same two ranks.

    Forward widens ``x`` (this rank's channels) by the neighbours' channels its window
    reads; backward sends the halo's gradient back and adds the gradients of the edges
    sent. Each direction's sends and receives go as one batch (``Transport.start_swap``),
    so no pair blocks the other."""

    transport: Transport
    layer: str  # type: ignore[misc]
    own: tuple[int, int]
    sends: tuple[tuple[int, tuple[int, int]], ...]
    recvs: tuple[tuple[int, tuple[int, int]], ...]
    tag: int

    def start(self, x: torch.Tensor, lane: int) -> tuple[torch.Tensor, Any]:
        o0 = self.own[0]
        outgoing = [(dst, x[:, a - o0:b - o0]) for dst, (a, b) in self.sends]
        incoming = [(src, (x.shape[0], b - a, *x.shape[2:])) for src, (a, b) in self.recvs]
        return x, self.transport.start_swap(outgoing, incoming, 2 * self.tag, self.layer, "fwd", lane=lane,
                                            dtype=self.transport.dtype)

    def finish(self, state: tuple[torch.Tensor, Any]) -> torch.Tensor:
        x, swap = state
        got = self.transport.complete(swap)
        o0, o1 = self.own
        left = [g for g, (_, (a, _b)) in zip(got, self.recvs, strict=True) if a < o0]
        right = [g for g, (_, (a, _b)) in zip(got, self.recvs, strict=True) if a >= o1]
        return torch.cat([*left, x, *right], dim=1)

    def start_back(self, grad: torch.Tensor, lane: int, like: torch.Size) -> tuple[torch.Tensor, Any]:
        lo = min([self.own[0], *(a for _, (a, _b) in self.recvs)])
        outgoing = [(src, grad[:, a - lo:b - lo]) for src, (a, b) in self.recvs]
        incoming = [(dst, (grad.shape[0], b - a, *grad.shape[2:])) for dst, (a, b) in self.sends]
        return grad, self.transport.start_swap(outgoing, incoming, 2 * self.tag + 1, self.layer, "bwd", lane=lane,
                                               dtype=self.transport.dtype)

    def finish_back(self, state: tuple[torch.Tensor, Any]) -> torch.Tensor:
        grad, swap = state
        got = self.transport.complete(swap)
        o0, o1 = self.own
        lo = min([o0, *(a for _, (a, _b) in self.recvs)])
        own = grad[:, o0 - lo:o1 - lo].clone()
        for g, (_, (a, b)) in zip(got, self.sends, strict=True):
            own[:, a - o0:b - o0] += g
        return own


class _Now(torch.autograd.Function):
    """An exchange done in place: start and finish at once, in both directions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, ex: ExchangeOp, lane: int) -> torch.Tensor:
        ctx.ex, ctx.lane, ctx.like = ex, lane, x.shape
        return ex.finish(ex.start(x, lane))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ex: ExchangeOp = ctx.ex
        return ex.finish_back(ex.start_back(grad, ctx.lane, ctx.like)), None, None


class Ticket:
    """What travels between the two halves of a split exchange: the forward's started
    state (from ``begin`` to ``end``) and the backward's (from ``end``'s backward to
    ``begin``'s). Each is dropped as soon as it has been taken."""

    def __init__(self) -> None:
        self.forward: Any = None
        self.backward: Any = None


class _Begin(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, ex: ExchangeOp, lane: int, ticket: Ticket) -> torch.Tensor:
        ctx.ex, ctx.ticket = ex, ticket
        ticket.forward = ex.start(x, lane)
        return x.new_empty(0)  # a token: carries the autograd edge from begin to end, no data

    @staticmethod
    def backward(ctx: Any, _token: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        state, ctx.ticket.backward = ctx.ticket.backward, None
        return ctx.ex.finish_back(state), None, None, None


class _End(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, token: torch.Tensor, ex: ExchangeOp, lane: int, ticket: Ticket,
                like: torch.Size) -> torch.Tensor:
        ctx.ex, ctx.lane, ctx.ticket, ctx.like = ex, lane, ticket, like
        state, ticket.forward = ticket.forward, None
        return ex.finish(state)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ctx.ticket.backward = ctx.ex.start_back(grad, ctx.lane, ctx.like)
        return grad.new_empty(0), None, None, None, None


def exchange(x: torch.Tensor, ex: ExchangeOp, lane: int = 0) -> torch.Tensor:
    """Run ``ex`` on ``x`` now (forward, and its backward when gradients flow back)."""
    return _Now.apply(x, ex, lane)


def begin(x: torch.Tensor, ex: ExchangeOp, lane: int) -> tuple[torch.Tensor, Ticket, torch.Size]:
    """Start ``ex`` on ``x`` and return at once; ``end`` gives the result. In backward the
    order reverses: ``end``'s backward starts the gradient's exchange and ``begin``'s
    waits for it, so whatever autograd runs in between overlaps it."""
    ticket = Ticket()
    return _Begin.apply(x, ex, lane, ticket), ticket, x.shape


def end(started: tuple[torch.Tensor, Ticket, torch.Size], ex: ExchangeOp, lane: int) -> torch.Tensor:
    token, ticket, like = started
    return _End.apply(token, ex, lane, ticket, like)


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
