"""What every launcher does once it knows a process's rank: the part they share.

A launcher (simulate.py, torchrun.py, ray.py) decides where processes run and how their
rank is known; then each rank goes through the same steps here: the rendezvous
environment (``rank_environment``), a store (``open_store``, served on 127.0.0.1 only
when the job is on one machine), the process group, the worker function, and teardown
(``run_in_group``). A rank that fails reaches the caller as one ``WorkerFailed``.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from splitnet.errors import SplitnetError

# A worker function: job(rank, world_size, cfg) -> this rank's result
Job = Callable[[int, int, dict[str, Any]], Any]


class WorkerFailed(SplitnetError, RuntimeError):
    """The job's root cause: a rank's exception and traceback, or the signal that killed it.

    With ``cause`` (the message of a ``SplitnetError`` the rank raised: bad data, a
    checkpoint, a stalled exchange) the failure is that one line, naming the rank; a rank
    that keeps a log has written the traceback there. Any other exception is a bug, and
    keeps its traceback in ``detail``."""

    def __init__(self, rank: int, detail: str, *, signal_number: int | None = None, cause: str | None = None) -> None:
        if cause is not None:
            text = cause if cause.startswith(f"rank {rank}:") else f"rank {rank}: {cause}"
        elif signal_number is None:
            text = "\n".join(filter(None, [f"rank {rank} failed:", detail]))
        else:
            name = signal.Signals(signal_number).name if signal_number in signal.valid_signals() else "?"
            text = "\n".join(filter(None, [f"rank {rank} was killed by signal {signal_number} ({name})", detail]))
        super().__init__(text)
        self.rank, self.detail, self.signal_number, self.cause = rank, detail, signal_number, cause

    def with_context(self, context: str) -> WorkerFailed:
        """The same failure, its message followed by ``context`` (the rank's log, the run folder);
        a failure with a ``cause`` stays its one line."""
        if self.cause is not None:
            return self
        return WorkerFailed(self.rank, "\n".join(filter(None, [self.detail, context])),
                            signal_number=self.signal_number)


def cause_of(exc: BaseException) -> str | None:
    """The one line a rank's exception stands for: a ``SplitnetError``'s message (its first
    line), or None for anything else (a bug: its traceback is the report)."""
    if not isinstance(exc, SplitnetError):
        return None
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the rendezvous store takes it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rank_environment(host: str, port: int, rank: int, world: int, local_rank: int, local_world: int) -> None:
    """The variables torch.distributed's rendezvous reads, as torchrun would set them."""
    os.environ.update({"MASTER_ADDR": host, "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
                       "LOCAL_WORLD_SIZE": str(local_world)})
    if is_loopback(host):  # gloo would otherwise pick the interface of the machine's hostname
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


_LISTENERS: list[socket.socket] = []


def loopback_store(port: int, rank: int, world: int, timeout_s: float) -> Any:
    """The rendezvous store, listening on 127.0.0.1 only.

    TCPStore's own server listens on every interface; handing it a socket we bound to
    loopback keeps it off the machine's network.
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if rank != 0:
        return dist.TCPStore("127.0.0.1", port, world, False, timeout)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    _LISTENERS.append(listener)  # the socket must stay open as long as the store serves
    return dist.TCPStore("127.0.0.1", port, world, True, timeout, master_listen_fd=listener.fileno())


def open_store(host: str, port: int, rank: int, world: int, timeout_s: float, *, served_by_rank0: bool = True) -> Any:
    """The job's key-value store at ``host:port``. Rank 0 serves it unless ``served_by_rank0``
    is false (torchrun's agent serves it); a store rank 0 serves for a job on one machine
    listens on loopback only."""
    import torch.distributed as dist

    if served_by_rank0 and is_loopback(host):
        return loopback_store(port, rank, world, timeout_s)
    return dist.TCPStore(host, port, world, served_by_rank0 and rank == 0, timedelta(seconds=timeout_s))


def run_in_group(job: Job, rank: int, world: int, cfg: dict[str, Any], *, backend: str, store: Any,
                 timeout_s: float, threads: int | None = None) -> Any:
    """Join the process group (``backend`` over ``store``), run ``job(rank, world, cfg)`` and
    leave the group, also when the job fails. ``threads``: torch's intra-op threads."""
    import torch
    import torch.distributed as dist

    if threads:
        torch.set_num_threads(int(threads))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        return job(rank, world, cfg)
    finally:
        dist.destroy_process_group()
