"""The Transport: torch.distributed process groups for one rank of a mesh.

gloo on CPU, NCCL on CUDA (tensors on ``cuda:LOCAL_RANK``). Every group an exchange
needs is created once, up front, by every rank in the same order (a torch.distributed
rule): each replica's model-parallel group, each tower's device set, each pipeline
pair, and the data-parallel groups. Exchanges name groups by model-parallel ranks; the
transport maps them to this replica's global ranks.

Every wait carries ``comm.timeout_s``: a peer that never arrives turns into a
``StalledExchange`` that names this rank, the layer and the collective.

With ``waits`` set to a list (``splitnet profile`` does), every blocking wait is timed:
when this rank issued the operation, when it began to wait, when the wait ended, and a
key that every rank taking part computes alike (the group's global ranks and the
group's call count, or for a point-to-point transfer the pair, the tag and its count),
so the time spent waiting for the last peer can be told apart afterwards (comm/clock.py
says what each timed field means). Each
collective runs inside a ``splitnet.exchange`` profiler range, so an allocation
profile can tell its buffers from the layers' own tensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.profiler import record_function

from splitnet.comm.meter import Meter
from splitnet.errors import SplitnetError
from splitnet.partition.mesh import Mesh
from splitnet.partition.plan import Plan


class StalledExchange(SplitnetError, RuntimeError):
    pass


@dataclass
class Pending:
    """A started exchange: its work, and what turns the received buffers into the result
    once the work is done (``Transport.complete`` waits, then calls ``done``)."""

    work: Any  # one work, or a list of them (a batch of point-to-point transfers)
    layer: str
    what: str
    done: Callable[[], Any]


# Point-to-point tags of one lane lie below this; lane n's are shifted up by n of it
LANE_TAGS = 1 << 23


def _pad(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` with zeros appended along ``dim`` up to ``size`` (contiguous, as collectives need)."""
    short = size - x.shape[dim]
    if short == 0:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = short
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _default_device() -> torch.device:
    """Where this rank's tensors live: the CUDA device the launcher selected for an NCCL
    process group (``torch.cuda.set_device(LOCAL_RANK)``), the CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Transport:
    def __init__(self, plan: Plan, rank: int, device: torch.device | None = None,
                 timeout_s: float = 300.0) -> None:
        self.mesh = Mesh(plan.devices, plan.replicas)
        self.rank = rank
        self.replica, self.mp_rank = self.mesh.coords(rank)
        self.device = device or _default_device()
        self.timeout = timedelta(seconds=timeout_s)
        self.meter = Meter()
        self.waits: list[dict[str, Any]] | None = None
        self._calls: dict[tuple[Any, ...], int] = {}
        self._issued: dict[int, tuple[tuple[Any, ...], int]] = {}
        self._groups: dict[tuple[tuple[int, ...], int], Any] = {}  # (model-parallel ranks, lane) -> group
        self.replica_group: Any = None
        if not dist.is_initialized():
            if self.mesh.world_size != 1:
                raise SplitnetError(f"a mesh of {self.mesh.world_size} ranks needs torch.distributed "
                                    "initialised by a launcher")
            return
        if dist.get_world_size() != self.mesh.world_size:
            raise SplitnetError(f"the plan's mesh has {self.mesh.world_size} ranks (replicas "
                                f"{plan.replicas} x devices {plan.devices}) but the launcher started "
                                f"{dist.get_world_size()}")
        if plan.schedule == "1f1b" and dist.get_backend() == "nccl":
            # In 1F1B's steady phase neighbours send to each other at once (an activation one
            # way, a gradient the other); NCCL runs a pair's transfers in issue order, so two
            # unmatched sends can wait on each other. gloo matches by tag and never does.
            raise SplitnetError("partition.schedule=1f1b runs on gloo only for now: its crossing sends "
                                "can deadlock under NCCL; use partition.schedule=gpipe on GPUs")
        wanted = {tuple(range(plan.devices))}
        for ex in plan.exchanges().values():  # point-to-point sends need no group of their own
            if ex.collective != "send":
                wanted.update(g for g in ex.groups if len(g) > 1)
        # One copy of every group per lane: the chunks of a batch (plan.chunks) exchange
        # concurrently, each on its own lane, so no two ranks can disagree on the order of
        # one lane's collectives however backward interleaves the chunks.
        for lane in range(plan.chunks):
            for mp_ranks in sorted(wanted, key=lambda g: (len(g), g)):
                for replica in range(self.mesh.replicas):
                    ranks = [self.mesh.rank(replica, r) for r in mp_ranks]
                    group = dist.new_group(ranks, timeout=self.timeout) if len(ranks) > 1 else None
                    if replica == self.replica:
                        self._groups[(mp_ranks, lane)] = group
        for device in range(self.mesh.devices):
            ranks = self.mesh.replica_group(device)
            group = dist.new_group(ranks, timeout=self.timeout) if len(ranks) > 1 else None
            if device == self.mp_rank:
                self.replica_group = group
        if dist.get_backend() == "nccl":
            # NCCL lets a batch of point-to-point transfers (a halo) involve only some ranks
            # once every rank has taken part in a collective of the group
            dist.barrier()

    def global_rank(self, mp_rank: int) -> int:
        return self.mesh.rank(self.replica, mp_rank)

    def _global(self, mp_ranks: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.global_rank(r) for r in mp_ranks)

    def group(self, mp_ranks: tuple[int, ...], lane: int = 0) -> Any:
        if (mp_ranks, lane) not in self._groups:
            raise SplitnetError(f"rank {self.rank}: no process group for model-parallel ranks {mp_ranks} "
                                f"(lane {lane}); the plan did not declare it")
        return self._groups[(mp_ranks, lane)]

    def _issue(self, work: Any, peers: tuple[Any, ...]) -> Any:
        """Remember when and as which call of ``peers`` this rank issued ``work`` (when timing)."""
        if self.waits is not None:
            n = self._calls.get(peers, 0)
            self._calls[peers] = n + 1
            self._issued[id(work)] = ((*peers, n), time.perf_counter_ns())
        return work

    def _ranks_of(self, group: Any) -> tuple[int, ...]:
        return tuple(dist.get_process_group_ranks(group)) if group is not None else (self.rank,)

    def wait(self, work: Any, layer: str, what: str) -> None:
        entered = time.perf_counter_ns()
        try:
            work.wait(self.timeout)
        except RuntimeError as exc:
            raise StalledExchange(
                f"rank {self.rank}: the {what} at layer {layer!r} did not complete within "
                f"comm.timeout_s={self.timeout.total_seconds():g}s: a peer stalled or died ({exc})"
            ) from exc
        issued = self._issued.pop(id(work), None)
        if self.waits is not None and issued is not None:
            key, start = issued
            self.waits.append({"layer": layer, "what": what, "key": key, "issued": start,
                               "entered": entered, "left": time.perf_counter_ns()})

    def barrier(self, what: str) -> None:
        """Wait for every rank (no payload, not metered): e.g. all checkpoint shards written."""
        if dist.is_initialized() and self.mesh.world_size > 1:
            self.wait(dist.barrier(async_op=True), what, "barrier")

    # The collectives. Only comm/ calls these (exchange.py for activations and their
    # gradients, buckets.py for parameter gradients); the rest of splitnet calls comm/.

    def complete(self, pending: Pending) -> torch.Tensor:
        """Wait for a started exchange and return its result (joined, narrowed, metered)."""
        with record_function(f"splitnet.exchange:{pending.layer}"):
            for work in pending.work if isinstance(pending.work, list) else [pending.work]:
                self.wait(work, pending.layer, pending.what)
            return pending.done()

    def start_all_gather(self, x: torch.Tensor, mp_ranks: tuple[int, ...], layer: str, direction: str,
                         dim: int, sizes: tuple[int, ...] | None = None, lane: int = 0) -> Pending:
        """Join every member's ``x`` along ``dim``. ``sizes``: each member's extent along
        ``dim`` where they differ; every part then travels padded to the largest."""
        k = len(mp_ranks)
        with record_function(f"splitnet.exchange:{layer}"):
            x = x.contiguous()
            uneven = sizes is not None and len(set(sizes)) > 1
            if uneven:
                x = _pad(x, dim, max(sizes))  # type: ignore[arg-type]
            parts = [torch.empty_like(x) for _ in range(k)]
            work = dist.all_gather(parts, x, group=self.group(mp_ranks, lane), async_op=True)
        nbytes = x.numel() * x.element_size() * k

        def done() -> torch.Tensor:
            self.meter.record(layer, direction, "all_gather", nbytes, k)
            joined = [p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)] if uneven else parts  # type: ignore[arg-type]
            return torch.cat(joined, dim=dim)
        return Pending(self._issue(work, (*self._global(mp_ranks), lane)), layer, "all_gather", done)

    def start_reduce_scatter(self, x: torch.Tensor, mp_ranks: tuple[int, ...], layer: str, direction: str,
                             dim: int, sizes: tuple[int, ...] | None = None, lane: int = 0) -> Pending:
        """Sum ``x`` over the members; member i keeps its part along ``dim`` (``sizes[i]``
        wide where the parts differ, each padded to the largest for the collective)."""
        k = len(mp_ranks)
        with record_function(f"splitnet.exchange:{layer}"):
            if sizes is not None and len(set(sizes)) > 1:
                widest = max(sizes)
                parts = [_pad(p, dim, widest) for p in x.split(list(sizes), dim=dim)]
            else:
                parts = [p.contiguous() for p in x.chunk(k, dim=dim)]
            out = torch.empty_like(parts[0])
            work = dist.reduce_scatter(out, parts, group=self.group(mp_ranks, lane), async_op=True)
        own = sizes[mp_ranks.index(self.mp_rank)] if sizes is not None else out.shape[dim]

        def done() -> torch.Tensor:
            parts.clear()  # the inputs are no longer needed once the sum has arrived
            self.meter.record(layer, direction, "reduce_scatter", out.numel() * out.element_size() * k, k)
            return out.narrow(dim, 0, own) if own != out.shape[dim] else out
        return Pending(self._issue(work, (*self._global(mp_ranks), lane)), layer, "reduce_scatter", done)

    def all_reduce(self, x: torch.Tensor, group: Any, k: int, layer: str, direction: str) -> torch.Tensor:
        with record_function(f"splitnet.exchange:{layer}"):
            self.wait(self.start_all_reduce(x, group, k, layer, direction), layer, "all_reduce")
        return x

    def start_all_reduce(self, x: torch.Tensor, group: Any, k: int, layer: str, direction: str,
                         lane: int = 0) -> Any:
        """Sum ``x`` in place over the group without waiting; returns the work. ``x`` must be
        contiguous (a flat bucket or a fresh tensor): the sum lands in its storage."""
        self.meter.record(layer, direction, "all_reduce", x.numel() * x.element_size(), k)
        return self._issue(dist.all_reduce(x, group=group, async_op=True), (*self._ranks_of(group), lane))

    def send(self, x: torch.Tensor, mp_dst: int, tag: int) -> Any:
        """Start sending; the receiver meters the bytes. Returns the work to wait on later."""
        dst = self.global_rank(mp_dst)
        return self._issue(dist.isend(x.contiguous(), dst=dst, tag=tag), ("send", self.rank, dst, tag))

    def start_swap(self, outgoing: list[tuple[int, torch.Tensor]], incoming: list[tuple[int, tuple[int, ...]]],
                   tag: int, layer: str, direction: str) -> Pending:
        """Send each (rank, tensor) and receive each (rank, shape), as one batch of point-to-
        point transfers; completing it gives the received tensors in ``incoming``'s order.
        NCCL runs a batch as one group, so two ranks that send to each other at once cannot
        wait on each other (one by one, each rank's send would queue before its receive)."""
        with record_function(f"splitnet.exchange:{layer}"):
            got = [torch.empty(shape, device=self.device) for _, shape in incoming]
            ops = [dist.P2POp(dist.isend, x.contiguous(), self.global_rank(dst), tag=tag) for dst, x in outgoing]
            ops += [dist.P2POp(dist.irecv, buf, self.global_rank(src), tag=tag)
                    for (src, _), buf in zip(incoming, got, strict=True)]
            works = dist.batch_isend_irecv(ops) if ops else []
        peers = [("send", self.rank, self.global_rank(dst), tag) for dst, _ in outgoing]
        peers += [("send", self.global_rank(src), self.rank, tag) for src, _ in incoming]
        works = [self._issue(work, key) for work, key in zip(works, peers, strict=True)]

        def done() -> list[torch.Tensor]:
            for x in got:
                self.meter.record(layer, direction, "send", x.numel() * x.element_size(), 2)
            return got
        return Pending(works, layer, "swap", done)

    def recv(self, shape: tuple[int, ...], mp_src: int, tag: int, layer: str, direction: str) -> torch.Tensor:
        return self.complete(self.start_recv(shape, mp_src, tag, layer, direction))

    def start_recv(self, shape: tuple[int, ...], mp_src: int, tag: int, layer: str, direction: str) -> Pending:
        """Start receiving a ``shape`` tensor from ``mp_src``; metered when it has arrived."""
        src = self.global_rank(mp_src)
        with record_function(f"splitnet.exchange:{layer}"):
            x = torch.empty(shape, device=self.device)
            work = self._issue(dist.irecv(x, src=src, tag=tag), ("send", src, self.rank, tag))

        def done() -> torch.Tensor:
            self.meter.record(layer, direction, "send", x.numel() * x.element_size(), 2)
            return x
        return Pending(work, layer, "receive", done)
