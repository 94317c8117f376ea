"""Elastic torchrun: a node lost for good, the survivor continues on fewer replicas, exactly (issue 21)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from splitnet.train.checkpoint import complete_checkpoints, read_meta
from tests.launching import JOB, assert_bitwise_equal, final_params, loopback_rendezvous, start_torchrun
from tests.training import train


def lose_node(agent: int) -> None:
    """SIGKILL a torchrun agent's process group and its workers' (torchrun starts each worker in a
    session of its own), agent first, so that it cannot start them again."""
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == agent]
    os.killpg(agent, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _parent(proc: Path) -> int | None:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


@pytest.mark.timeout(600)
def test_torchrun_survivor_of_a_lost_node_finishes_on_one_replica_bitwise_equal(tmp_path):
    """Two agents of 2 ranks (R=2 x D=2, a global batch of 32); the second agent and its workers
    are SIGKILLed after the first checkpoint; the first restarts alone as R=1 x 2 micro-steps."""
    want = tmp_path / "want"
    train(want, *JOB, "mesh.replicas=2")
    run_dir = tmp_path / "run"
    elastic = ["--nnodes=1:2", "--nproc-per-node=2", "--max-restarts=1", "mesh.replicas=null"]
    with loopback_rendezvous("elastic") as rendezvous:
        # the survivor's next rendezvous closes this long after it alone has joined
        rendezvous = [a + ",last_call_timeout=20" if a.startswith("--rdzv-conf=") else a for a in rendezvous]
        args = [*rendezvous, *elastic[:3]]
        first = start_torchrun(args, tmp_path, tmp_path / "first.txt", elastic[3], f"train.run_dir={run_dir}")
        second = start_torchrun(args, tmp_path, tmp_path / "second.txt", elastic[3], f"train.run_dir={run_dir}",
                                own_group=True)
        deadline = time.monotonic() + 300
        while not complete_checkpoints(run_dir / "checkpoints") and first.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)  # polling the file system, not standing in for synchronisation
        lose_node(second.pid)
        second.wait()
        before = read_meta(complete_checkpoints(run_dir / "checkpoints")[0])
        assert first.wait(timeout=300) == 0, (tmp_path / "first.txt").read_text()
    assert (before["replicas"], before["accumulate"], before["global_batch"]) == (2, 1, 32)
    after = read_meta(complete_checkpoints(run_dir / "checkpoints")[-1])
    assert (after["step"], after["replicas"], after["accumulate"], after["global_batch"]) == (12, 1, 2, 32)
    assert_bitwise_equal(final_params(run_dir), final_params(want))
