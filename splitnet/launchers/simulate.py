"""``launcher=simulate``: N CPU processes on this machine stand in for N devices.

Each process joins a gloo process group on 127.0.0.1 (a free port), gets
max(1, cores // N) intra-op threads, and calls the worker function. The first worker
to fail stops all the others, and its exception and traceback, or the signal that
killed it, are raised here (``WorkerFailed``) with its rank; Ctrl-C or the parent's
death leaves no orphans, and SIGTERM to the parent is passed on to every rank (a
preemption: the ranks checkpoint at the step boundary and return). Each process is named ``splitnet-rank<r>`` (ps, top).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch

from splitnet.launchers.core import (
    Job,
    WorkerFailed,
    cause_of,
    free_port,
    loopback_store,
    rank_environment,
    run_in_group,
)


def _die_with_parent(rank: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            # PR_SET_NAME: ps, top and /proc/PID/comm show which rank a process is (15 bytes at most)
            libc.prctl(15, f"splitnet-rank{rank}".encode()[:15])
        except OSError:
            pass


def _die_reporting(out: Path, rank: int, exc: BaseException) -> NoReturn:
    (out / f"rank{rank}.err").write_text("".join(traceback.format_exception(exc)))
    cause = cause_of(exc)
    if cause is not None:
        (out / f"rank{rank}.cause").write_text(cause)
    with contextlib.suppress(FileExistsError):  # the first rank to report claims the job's error
        os.symlink(f"rank{rank}.err", out / "first.err")
    sys.stderr.flush()
    os._exit(1)


def _entry(job: Job, rank: int, world: int, cfg: dict[str, Any], port: int, threads: int,
           timeout_s: float, out: str) -> None:
    _die_with_parent(rank)
    rank_environment("127.0.0.1", port, rank, world, rank, world)

    def job_or_die(rank: int, world: int, cfg: dict[str, Any]) -> Any:
        # A failed job reports before the group's teardown closes its connections: a peer
        # that sees them close fails too, and must not be the first to report.
        try:
            return job(rank, world, cfg)
        except BaseException as exc:  # everything, including KeyboardInterrupt
            _die_reporting(Path(out), rank, exc)

    try:
        result = run_in_group(job_or_die, rank, world, cfg, backend="gloo", timeout_s=timeout_s, threads=threads,
                              store=loopback_store(port, rank, world, timeout_s))
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException as exc:
        _die_reporting(Path(out), rank, exc)


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
    err, cause = out / f"rank{rank}.err", out / f"rank{rank}.cause"
    return WorkerFailed(rank, err.read_text() if err.exists() else f"exit code {exitcode}",
                        cause=cause.read_text() if cause.exists() else None)


@contextlib.contextmanager
def _forwarding_sigterm(procs: list[Any]) -> Iterator[None]:
    """SIGTERM to this process (``docker stop``, a scheduler) goes on to every rank, which
    stops at the next step boundary with a checkpoint; the job then ends as preempted."""

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread: whoever owns the main thread handles SIGTERM
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
            with _forwarding_sigterm(procs):
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
