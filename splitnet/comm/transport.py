"""The Transport: torch.distributed process groups for one rank of a mesh.

gloo on CPU, NCCL on CUDA (tensors on ``cuda:LOCAL_RANK``). Every group an exchange
needs is created once, up front, by every rank in the same order (a torch.distributed
rule): each replica's model-parallel group, each tower's device set, each pipeline
pair, and the data-parallel groups. Exchanges name groups by model-parallel ranks; the
transport maps them to this replica's global ranks.

Every wait carries ``comm.timeout_s``: a peer that never arrives turns into a
``StalledExchange`` that names this rank, the layer and the collective, and says whether
the peer went silent for the whole timeout or closed its connection early.

NCCL is stricter than gloo, and the same code runs on both: point-to-point transfers pair
by their order within a process group (tags are ignored), so each lane's transfers travel
in that lane's group; a batch of transfers is one work; a group runs a collective before
any point-to-point that involves only some of its ranks; and a wait is a stream
dependency, not a host-side poll, so a stall is caught by the group's own timeout
(``comm.timeout_s``, and the NCCL watchdog's ``TORCH_NCCL_ASYNC_ERROR_HANDLING``).
``nccl_rules=True`` (``comm.nccl_rules``) makes gloo keep those rules too: tags are
dropped, waits carry no timeout, and the communicators a rank opens are bounded.

With ``waits`` set to a list (``splitnet profile`` does), every blocking wait is timed:
when this rank issued the operation, when it began to wait, when the wait ended, and
keys that every rank taking part computes alike (the group's global ranks and the
group's call count, or for each point-to-point transfer the pair, the tag and its count),
so the time spent waiting for the last peer can be told apart afterwards (comm/clock.py
says what each timed field means). Each
collective runs inside a ``splitnet.exchange`` profiler range, so an allocation
profile can tell its buffers from the layers' own tensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.profiler import record_function

from splitnet.comm.meter import Meter
from splitnet.errors import SplitnetError
from splitnet.partition.groups import communicators, process_groups
from splitnet.partition.mesh import Mesh
from splitnet.partition.plan import Plan

# The plan's bytes per activation -> the dtype forward computes in (bf16: under autocast) and
# the exchanges carry
COMPUTE_DTYPES = {4: torch.float32, 2: torch.bfloat16}


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


def _pad(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` with zeros appended along ``dim`` up to ``size`` (contiguous, as collectives need)."""
    short = size - x.shape[dim]
    if short == 0:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = short
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class _Batch:
    """The one work NCCL returns for a whole ``batch_isend_irecv`` (torch coalesces the batch),
    made of gloo's work per transfer."""

    def __init__(self, works: list[Any]) -> None:
        self.works = works

    def wait(self, *timeout: timedelta) -> bool:
        for work in self.works:
            work.wait(*timeout)
        return True


def _default_device() -> torch.device:
    """Where this rank's tensors live: the CUDA device the launcher selected for an NCCL
    process group (``torch.cuda.set_device(LOCAL_RANK)``), the CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Transport:
    def __init__(self, plan: Plan, rank: int, device: torch.device | None = None,
                 timeout_s: float = 300.0, nccl_rules: bool = False, max_communicators: int = 16) -> None:
        self.mesh = Mesh(plan.devices, plan.replicas)
        if plan.dtype_bytes not in COMPUTE_DTYPES:
            raise SplitnetError(f"the plan's dtype_bytes={plan.dtype_bytes}: the runtime computes in float32 (4) "
                                "or bf16 (2, train.precision=bf16)")
        self.dtype = COMPUTE_DTYPES[plan.dtype_bytes]  # what the exchanges carry: the compute dtype
        nccl = dist.is_initialized() and dist.get_backend() == "nccl"
        self.nccl_rules = nccl_rules or nccl
        self._emulate = nccl_rules and not nccl  # gloo made to behave as NCCL does
        self.rank = rank
        self.replica, self.mp_rank = self.mesh.coords(rank)
        self.device = device or _default_device()
        self.timeout = timedelta(seconds=timeout_s)
        self.meter = Meter()
        self.waits: list[dict[str, Any]] | None = None
        self._calls: dict[tuple[Any, ...], int] = {}
        self._issued: dict[int, tuple[list[tuple[Any, ...]], int]] = {}
        self._groups: dict[tuple[tuple[int, ...], int], Any] = {}  # (model-parallel ranks, lane) -> group
        self.replica_group: Any = None
        self._ready: set[Any] = set()  # groups that have run a collective (None: the default group)
        if not dist.is_initialized():
            if self.mesh.world_size != 1:
                raise SplitnetError(f"a mesh of {self.mesh.world_size} ranks needs torch.distributed "
                                    "initialised by a launcher")
            return
        if dist.get_world_size() != self.mesh.world_size:
            raise SplitnetError(f"the plan's mesh has {self.mesh.world_size} ranks (replicas "
                                f"{plan.replicas} x devices {plan.devices}) but the launcher started "
                                f"{dist.get_world_size()}")
        if plan.schedule == "1f1b" and self.nccl_rules:
            # In 1F1B's steady phase neighbours send to each other at once (an activation one
            # way, a gradient the other); NCCL runs a pair's transfers in issue order, so two
            # unmatched sends can wait on each other. gloo matches by tag and never does.
            raise SplitnetError("partition.schedule=1f1b runs on gloo only for now: its crossing sends "
                                "can deadlock under NCCL (and comm.nccl_rules=true says so); use "
                                "partition.schedule=gpipe on GPUs")
        opened = communicators(plan, self.mp_rank)
        if self.nccl_rules and opened > max_communicators:
            raise SplitnetError(
                f"rank {rank} would open {opened} NCCL communicators (partition.chunks={plan.chunks} lanes of "
                f"process groups); comm.max_communicators={max_communicators}: lower partition.chunks or "
                "raise comm.max_communicators")
        # Every replica creates its groups in one order (a torch.distributed rule); this rank
        # keeps its own replica's. A chunk's exchanges run on its own lane, so no two ranks can
        # disagree on the order of one lane's transfers however backward interleaves the chunks.
        for mp_ranks, lane in process_groups(plan):
            for replica in range(self.mesh.replicas):
                ranks = [self.mesh.rank(replica, r) for r in mp_ranks]
                # NCCL's watchdog names the group of a collective that timed out: say which it is
                desc = f"splitnet lane {lane} devices {','.join(map(str, mp_ranks))} replica {replica}"
                group = dist.new_group(ranks, timeout=self.timeout, group_desc=desc) if len(ranks) > 1 else None
                if replica == self.replica:
                    self._groups[(mp_ranks, lane)] = group
        for device in range(self.mesh.devices):
            ranks = self.mesh.replica_group(device)
            desc = f"splitnet replicas of device {device}"
            group = dist.new_group(ranks, timeout=self.timeout, group_desc=desc) if len(ranks) > 1 else None
            if device == self.mp_rank:
                self.replica_group = group
        if self.nccl_rules:
            # NCCL lets a batch of point-to-point transfers (a halo) involve only some ranks of
            # a group once every rank has taken part in a collective of it
            for lane in range(plan.chunks):
                group = self._groups[(tuple(range(plan.devices)), lane)]
                if group is not None:
                    self.wait(dist.barrier(group=self._collective(group), async_op=True), "start", "barrier")

    def global_rank(self, mp_rank: int) -> int:
        return self.mesh.rank(self.replica, mp_rank)

    def _global(self, mp_ranks: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.global_rank(r) for r in mp_ranks)

    def group(self, mp_ranks: tuple[int, ...], lane: int = 0) -> Any:
        if (mp_ranks, lane) not in self._groups:
            raise SplitnetError(f"rank {self.rank}: no process group for model-parallel ranks {mp_ranks} "
                                f"(lane {lane}); the plan did not declare it")
        return self._groups[(mp_ranks, lane)]

    def _issue(self, work: Any, *peers: tuple[Any, ...]) -> Any:
        """Remember when and as which call of each of ``peers`` this rank issued ``work``
        (when timing; a batch of transfers has one ``peers`` per transfer)."""
        if self.waits is not None:
            keys = []
            for key in peers:
                n = self._calls.get(key, 0)
                self._calls[key] = n + 1
                keys.append((*key, n))
            self._issued[id(work)] = (keys, time.perf_counter_ns())
        return work

    def _ranks_of(self, group: Any) -> tuple[int, ...]:
        return tuple(dist.get_process_group_ranks(group)) if group is not None else (self.rank,)

    def wait(self, work: Any, layer: str, what: str) -> None:
        entered = time.perf_counter_ns()
        try:
            if self.nccl_rules:  # NCCL: a stream dependency; a stall trips the group's own timeout
                work.wait()
            else:
                work.wait(self.timeout)
        except RuntimeError as exc:
            raise self.stalled(layer, what, (time.perf_counter_ns() - entered) / 1e9, exc) from exc
        issued = self._issued.pop(id(work), None)
        if self.waits is not None and issued is not None:
            keys, start = issued
            self.waits.append({"layer": layer, "what": what, "keys": keys, "issued": start,
                               "entered": entered, "left": time.perf_counter_ns()})

    def stalled(self, layer: str, what: str, waited_s: float, exc: Exception) -> StalledExchange:
        """Tell a peer that went silent for the whole timeout (stopped, hung, too slow) from one
        whose connection closed early (it exited: its own error is the cause)."""
        limit = self.timeout.total_seconds()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"rank {self.rank}: the {what} at layer {layer!r}"
        if waited_s >= limit or "timed out" in text.lower() or "timeout" in text.lower():
            return StalledExchange(f"{where} did not complete within comm.timeout_s={limit:g}s: a peer went "
                                   "silent (stopped, hung, or slower than the timeout; raise comm.timeout_s if "
                                   f"it is only slow) ({text})")
        return StalledExchange(f"{where} failed after {waited_s:.1f}s: a peer closed its connection (it exited "
                               f"or crashed; its own error is the cause) ({text})")

    def barrier(self, what: str) -> None:
        """Wait for every rank (no payload, not metered): e.g. all checkpoint shards written."""
        if dist.is_initialized() and self.mesh.world_size > 1:
            self.wait(dist.barrier(async_op=True), what, "barrier")

    def any_rank(self, flag: bool, what: str) -> bool:
        """Whether ``flag`` is set on any rank, the same answer on every rank (a one-number
        all-reduce over the world, not metered): e.g. a stop that one rank was asked for."""
        if not dist.is_initialized() or self.mesh.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        self.wait(dist.all_reduce(value, op=dist.ReduceOp.MAX, async_op=True), what, "all_reduce")
        return bool(value.item())

    def gather_rows(self, tensors: Sequence[torch.Tensor], sizes: tuple[int, ...]) -> list[torch.Tensor]:
        """The replica's input batch from its model-parallel ranks' rows of it: each of
        ``tensors`` (pixels, labels, ...) joined along rows in rank order, rank i holding
        ``sizes[i]`` rows. Rows travel in their own dtype (never the compute dtype: the batch
        is bitwise the one a single rank decodes whole), each part padded to the largest, and
        are metered as a data transfer (``Meter.record_data``), not as an exchange of the plan."""
        ranks = tuple(range(self.mesh.devices))
        group = self._collective(self.group(ranks))
        pending = []
        for x in tensors:
            x = _pad(x, 0, max(sizes))
            parts = [torch.empty_like(x) for _ in ranks]
            pending.append((dist.all_gather(parts, x, group=group, async_op=True), parts))
            self.meter.record_data("all_gather", x.numel() * x.element_size() * len(ranks), len(ranks))
        joined = []
        for work, parts in pending:
            self.wait(work, "data", "all_gather of the input batch")
            joined.append(torch.cat([p.narrow(0, 0, n) for p, n in zip(parts, sizes, strict=True)]))
        return joined

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every model-parallel rank's ``obj`` (picklable), in rank order: a rare record such as
        the data loader's damage at an epoch's end. Not metered: no tensor of the plan's."""
        if self.mesh.devices == 1:
            return [obj]
        out: list[Any] = [None] * self.mesh.devices
        dist.all_gather_object(out, obj, group=self._collective(self.group(tuple(range(self.mesh.devices)))))
        return out

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
            x = x.to(self.dtype).contiguous()  # exchanges carry the compute dtype (autocast leaves some ops fp32)
            uneven = sizes is not None and len(set(sizes)) > 1
            if uneven:
                x = _pad(x, dim, max(sizes))  # type: ignore[arg-type]
            parts = [torch.empty_like(x) for _ in range(k)]
            work = dist.all_gather(parts, x, group=self._collective(self.group(mp_ranks, lane)), async_op=True)
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
            x = x.to(self.dtype)
            if sizes is not None and len(set(sizes)) > 1:
                widest = max(sizes)
                parts = [_pad(p, dim, widest) for p in x.split(list(sizes), dim=dim)]
            else:
                parts = [p.contiguous() for p in x.chunk(k, dim=dim)]
            out = torch.empty_like(parts[0])
            work = dist.reduce_scatter(out, parts, group=self._collective(self.group(mp_ranks, lane)), async_op=True)
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
        work = dist.all_reduce(x, group=self._collective(group), async_op=True)
        return self._issue(work, (*self._ranks_of(group), lane))

    def _lane(self, lane: int, layer: str) -> Any:
        """The group a lane's point-to-point transfers travel in: all of this replica's
        devices, that lane's copy. NCCL pairs transfers by their order within a group and
        ignores tags, so each lane needs its own; under NCCL's rules a transfer that involves
        only some of the group's ranks may start only after a collective in it."""
        group = self.group(tuple(range(self.mesh.devices)), lane)
        if self.nccl_rules and group not in self._ready:
            raise SplitnetError(f"rank {self.rank}: point-to-point at layer {layer!r} in a process group "
                                "that has run no collective yet; under NCCL it hangs or fails")
        return group

    def _collective(self, group: Any) -> Any:
        self._ready.add(group)
        return group

    def _tag(self, tag: int) -> int:
        """NCCL ignores point-to-point tags: under its rules gloo must not lean on them either."""
        return 0 if self._emulate else tag

    def send(self, x: torch.Tensor, mp_dst: int, tag: int, layer: str = "send") -> Any:
        """Start sending; the receiver meters the bytes. Returns the work to wait on later."""
        dst = self.global_rank(mp_dst)
        x = x.to(self.dtype) if x.is_floating_point() else x  # what the receiver's buffer holds
        work = dist.isend(x.contiguous(), dst=dst, group=self._lane(0, layer), tag=self._tag(tag))
        return self._issue(work, ("send", self.rank, dst, tag))

    def start_swap(self, outgoing: list[tuple[int, torch.Tensor]], incoming: list[tuple[int, tuple[int, ...]]],
                   tag: int, layer: str, direction: str, *, lane: int, dtype: torch.dtype) -> Pending:
        """Send each (rank, tensor) and receive each (rank, shape), all in ``dtype`` (the sender
        sends it, the receiver's buffers take it; bf16 halves the bytes), as one batch of
        point-to-point transfers in ``lane``'s group; completing it gives the received tensors
        in ``incoming``'s order. NCCL runs a batch as one group and returns one work for it, so
        two ranks that send to each other at once cannot wait on each other (one by one, each
        rank's send would queue before its receive). Transfers between two ranks pair by their
        order in the batch, the same on both sides."""
        group = self._lane(lane, layer)
        with record_function(f"splitnet.exchange:{layer}"):
            got = [torch.empty(shape, dtype=dtype, device=self.device) for _, shape in incoming]
            ops = [dist.P2POp(dist.isend, x.to(dtype).contiguous(), self.global_rank(dst), group, self._tag(tag))
                   for dst, x in outgoing]
            ops += [dist.P2POp(dist.irecv, buf, self.global_rank(src), group, self._tag(tag))
                    for (src, _), buf in zip(incoming, got, strict=True)]
            works = dist.batch_isend_irecv(ops) if ops else []
        keys = [("send", self.rank, self.global_rank(dst), tag) for dst, _ in outgoing]
        keys += [("send", self.global_rank(src), self.rank, tag) for src, _ in incoming]
        # NCCL coalesces the batch into one work, gloo gives one per transfer: wait on them as one
        batch = self._issue(_Batch(works), *keys)

        def done() -> list[torch.Tensor]:
            for x in got:
                self.meter.record(layer, direction, "send", x.numel() * x.element_size(), 2)
            return got
        return Pending(batch, layer, "swap", done)

    def recv(self, shape: tuple[int, ...], mp_src: int, tag: int, layer: str, direction: str,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.complete(self.start_recv(shape, mp_src, tag, layer, direction, dtype))

    def start_recv(self, shape: tuple[int, ...], mp_src: int, tag: int, layer: str, direction: str,
                   dtype: torch.dtype | None = None) -> Pending:
        """Start receiving a ``shape`` tensor from ``mp_src``; metered when it has arrived. Its
        dtype is the sender's: ``dtype``, else the exchanges' (``self.dtype``)."""
        src = self.global_rank(mp_src)
        group = self._lane(0, layer)
        with record_function(f"splitnet.exchange:{layer}"):
            x = torch.empty(shape, dtype=dtype or self.dtype, device=self.device)
            work = self._issue(dist.irecv(x, src=src, group=group, tag=self._tag(tag)), ("send", src, self.rank, tag))

        def done() -> torch.Tensor:
            self.meter.record(layer, direction, "send", x.numel() * x.element_size(), 2)
            return x
        return Pending(work, layer, "receive", done)
