"""Shared helpers for the launcher tests: one small job, its uninterrupted simulate result,
and the means to find and kill one rank's process."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import torch

from splitnet.train.checkpoint import complete_checkpoints, find_checkpoint, merged_state
from tests.training import train

# 12 steps of alexnet_small at batch 16 on 2 devices, a checkpoint every 2: enough steps after
# the first checkpoint to kill a rank mid-run, few enough for CI.
JOB = ["data=synthetic", "data.num_classes=10", "data.train_batches=12", "data.val_batches=1", "batch_size=16",
       "eval.batch_size=16", "train.epochs=1", "train.checkpoint_every=2", "comm.timeout_s=60",
       "launcher.threads=1"]

ROOT = Path(__file__).resolve().parent.parent

_KEEP: list[tempfile.TemporaryDirectory] = []


@functools.cache
def simulate_params() -> dict[str, torch.Tensor]:
    """The job's final parameters under launcher=simulate, uninterrupted (computed once per session)."""
    folder = tempfile.TemporaryDirectory(prefix="splitnet-sim-job-")
    _KEEP.append(folder)
    run_dir = Path(folder.name) / "run"
    train(run_dir, *JOB)
    return final_params(run_dir)


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    """The run's latest checkpoint merged into the reference layout (what `splitnet export` writes)."""
    return merged_state(find_checkpoint(run_dir))


def assert_bitwise_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    unequal = [k for k in want if not torch.equal(got[k], want[k])]
    assert not unequal, f"parameters differ: {unequal}"


def rank_pid(marker: str, rank: int) -> int | None:
    """The process of global rank ``rank`` whose command line or environment mentions ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and (marker.encode() in cmd or any(marker.encode() in e for e in env)):
            return int(entry.name)
    return None


def kill_after_first_checkpoint(run_dir: Path, pid_of: Callable[[], int | None], alive: Callable[[], bool],
                                timeout_s: float = 400.0) -> int:
    """SIGKILL a rank's process as soon as the run has a complete checkpoint; returns the step it had."""
    return signal_after_first_checkpoint(run_dir, pid_of, alive, signal.SIGKILL, timeout_s)


def stop_after_first_checkpoint(run_dir: Path, pid_of: Callable[[], int | None], alive: Callable[[], bool],
                                timeout_s: float = 400.0) -> int:
    """SIGSTOP a rank's process (a peer gone silent) once the run has a complete checkpoint."""
    return signal_after_first_checkpoint(run_dir, pid_of, alive, signal.SIGSTOP, timeout_s)


def signal_after_first_checkpoint(run_dir: Path, pid_of: Callable[[], int | None], alive: Callable[[], bool],
                                  signum: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        done = complete_checkpoints(run_dir / "checkpoints")
        pid = pid_of() if done else None
        if pid is not None:
            os.kill(pid, signum)
            return int(done[-1].name.removeprefix("step_"))
        time.sleep(0.01)  # polling the file system, not standing in for synchronisation
    raise AssertionError(f"no checkpoint and rank process to kill in {run_dir} within {timeout_s}s")


def until(condition: Callable[[], object], alive: Callable[[], bool], timeout_s: float = 400.0) -> object:
    """``condition()``'s first true value, polled while ``alive()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        value = condition()
        if value:
            return value
        time.sleep(0.01)  # polling the file system, not standing in for synchronisation
    raise AssertionError(f"{getattr(condition, '__name__', 'a condition')} did not come true within {timeout_s}s")


def first_checkpoint(run_dir: Path, alive: Callable[[], bool], timeout_s: float = 400.0) -> int:
    """The step of the run's first complete checkpoint, returned as soon as one exists."""
    done = until(lambda: complete_checkpoints(run_dir / "checkpoints"), alive, timeout_s)
    return int(done[0].name.removeprefix("step_"))


@contextlib.contextmanager
def loopback_rendezvous(run_id: str) -> Iterator[list[str]]:
    """torchrun arguments for a c10d rendezvous on a store this test process serves on 127.0.0.1.

    torchrun's agent would host the rendezvous store itself, on every interface (TCPStore's
    server takes a port, not an address); with the store already served here, bound to
    loopback, every agent joins it as a client (``is_host=false``).
    """
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    # the store owns the listening socket from here on, and closes it when it is dropped
    store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=300), wait_for_workers=False,
                          master_listen_fd=listener.detach())
    try:
        yield ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-conf=is_host=false",
               f"--rdzv-id={run_id}", "--local-addr=127.0.0.1"]
    finally:
        del store


def start_torchrun(torchrun_args: list[str], cwd: Path, log: Path, *overrides: str,
                   own_group: bool = False) -> subprocess.Popen:
    """``torchrun ARGS -m splitnet train launcher=torchrun JOB OVERRIDES`` in the background, output to ``log``.

    The agent serves no store of its own for the workers (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE``):
    rank 0 serves it, on 127.0.0.1 because ``--local-addr`` makes that the master address.
    ``own_group``: the agent and its workers in a process group of their own (a node to lose)."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo",  # else gloo binds the interface of the machine's hostname
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "splitnet",
                                 "train", "launcher=torchrun", *JOB, *overrides],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=own_group)
