"""``launcher=simulate``: N CPU processes on this machine stand in for N devices.

Each process joins a gloo process group on 127.0.0.1 (a free port), gets
max(1, cores // N) intra-op threads, and calls the worker function. The first worker
to fail stops all the others, and its exception and traceback, or the signal that
killed it, are raised here (``WorkerFailed``) with its rank; Ctrl-C or the parent's
death leaves no orphans. Each process is named ``splitnet-rank<r>`` (ps, top).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from splitnet.errors import SplitnetError

Job = Callable[[int, int, dict[str, Any]], Any]


class WorkerFailed(SplitnetError, RuntimeError):
    """The job's root cause: a rank's exception and traceback, or the signal that killed it."""

    def __init__(self, rank: int, detail: str, *, signal_number: int | None = None) -> None:
        if signal_number is None:
            headline = f"rank {rank} failed:"
        else:
            name = signal.Signals(signal_number).name if signal_number in signal.valid_signals() else "?"
            headline = f"rank {rank} was killed by signal {signal_number} ({name})"
        super().__init__("\n".join(filter(None, [headline, detail])))
        self.rank, self.detail, self.signal_number = rank, detail, signal_number

    def with_context(self, context: str) -> WorkerFailed:
        """The same failure, its message followed by ``context`` (the rank's log, the run folder)."""
        return WorkerFailed(self.rank, "\n".join(filter(None, [self.detail, context])),
                            signal_number=self.signal_number)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _die_with_parent(rank: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            # PR_SET_NAME: ps, top and /proc/PID/comm show which rank a process is (15 bytes at most)
            libc.prctl(15, f"splitnet-rank{rank}".encode()[:15])
        except OSError:
            pass


def _entry(job: Job, rank: int, world: int, cfg: dict[str, Any], port: int, threads: int,
           timeout_s: float, out: str) -> None:
    _die_with_parent(rank)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")})
    torch.set_num_threads(threads)
    try:
        import torch.distributed as dist

        dist.init_process_group("gloo", store=loopback_store(port, rank, world, timeout_s), rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout_s))
        result = job(rank, world, cfg)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException as exc:  # report everything, including KeyboardInterrupt, then die
        detail = "".join(traceback.format_exception(exc))
        (Path(out) / f"rank{rank}.err").write_text(detail)
        with contextlib.suppress(FileExistsError):  # the first rank to report claims the job's error
            os.symlink(f"rank{rank}.err", Path(out) / "first.err")
        sys.stderr.flush()
        os._exit(1)


def _failure(out: Path, procs: list[Any], rank: int, exitcode: int) -> WorkerFailed:
    """The root cause, not its echo: once a rank dies its peers fail too ("connection closed
    by peer"), and a busy parent may notice one of them first. A rank killed by a signal
    before it could report (SIGKILL, the OOM killer) is the cause; else the first rank to
    report wins."""
    for r, proc in enumerate(procs):
        if proc.exitcode is not None and proc.exitcode < 0 and not (out / f"rank{r}.err").exists():
            return WorkerFailed(r, "", signal_number=-proc.exitcode)
    if (out / f"rank{rank}.err").exists() and (out / "first.err").is_symlink():
        rank = int(os.readlink(out / "first.err").removeprefix("rank").removesuffix(".err"))
    err = out / f"rank{rank}.err"
    return WorkerFailed(rank, err.read_text() if err.exists() else f"exit code {exitcode}")


def launch(job: Job, world_size: int, cfg: dict[str, Any], *, threads: int | None = None,
           timeout_s: float = 300.0) -> list[Any]:
    """Run ``job(rank, world_size, cfg)`` in ``world_size`` processes; return their results by rank."""
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    port = free_port()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="splitnet-sim-") as out:
        procs = [ctx.Process(target=_entry, name=f"splitnet-rank{r}",
                             args=(job, r, world_size, cfg, port, threads, timeout_s, out))
                 for r in range(world_size)]
        try:
            for p in procs:
                p.start()
            running = {p.sentinel: (r, p) for r, p in enumerate(procs)}
            while running:
                for sentinel in multiprocessing.connection.wait(list(running)):
                    rank, proc = running.pop(sentinel)
                    proc.join()
                    if proc.exitcode != 0:
                        raise _failure(Path(out), procs, rank, proc.exitcode)
        finally:
            started = [p for p in procs if p.pid is not None]  # a start that failed must not mask its error
            for p in started:
                if p.is_alive():
                    p.terminate()
            for p in started:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
