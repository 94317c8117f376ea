"""Elastic Ray: a node lost for good, the job goes on with the replicas that still fit (issue 21).

A two-node Ray cluster of its own (the test removes a node, so it cannot share
test_launch_ray.py's), both nodes on 127.0.0.1, each with room for one replica of 2 ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from splitnet.launchers.ray import RayLaunchError
from splitnet.report.sweep import size_changes
from splitnet.train.checkpoint import complete_checkpoints, read_meta
from tests.launching import JOB, assert_bitwise_equal, final_params, first_checkpoint, until
from tests.training import train

# Read by Ray when it is imported: node addresses are 127.0.0.1 and Ray listens on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

pytestmark = pytest.mark.cluster

# 8 steps of a global batch of 32 (2 replicas x 16), a checkpoint every 2
ELASTIC = [*JOB, "data.train_batches=8", "mesh.replicas=2", "train.keep=10"]


@pytest.fixture
def two_nodes(tmp_path):
    """A head and one more node, 2 CPUs each: one replica of 2 one-CPU ranks per node."""
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="sne", dir="/tmp")  # Ray's unix socket paths must stay short
    os.makedirs(os.path.join(temp, "ray"))
    common = {"node_ip_address": "127.0.0.1", "temp_dir": temp, "object_store_memory": 80 * 1024**2, "num_cpus": 2}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)
        nodes = Cluster()
        try:
            nodes.add_node(**common, include_dashboard=False)
            other = nodes.add_node(**common)
            ray.init(address=nodes.address, log_to_driver=True)
            yield nodes, other, common
        finally:
            ray.shutdown()
            nodes.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _placement(run_dir: Path) -> list[dict]:
    path = run_dir / "placement.json"
    return json.loads(path.read_text()) if path.exists() else []


def _one_replica_checkpoint(run_dir: Path) -> bool:
    return any(read_meta(c)["replicas"] == 1 for c in complete_checkpoints(run_dir / "checkpoints"))


def _start(run_dir: Path, *overrides: str) -> tuple[threading.Thread, dict]:
    """The Ray job in a thread of its own: the test changes the cluster from the main thread,
    the only one Ray starts nodes from. The dict gets its result ("out") or error ("error")."""
    ended: dict = {}

    def run() -> None:
        try:
            ended["out"] = train(run_dir, *ELASTIC, "launcher=ray", *overrides)
        except Exception as exc:  # raised again in the test's thread
            ended["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    return job, ended


@pytest.mark.timeout(300)
def test_a_ray_job_that_loses_a_node_goes_on_with_one_replica_grows_back_and_ends_bitwise_equal(two_nodes, tmp_path,
                                                                                                capsys):
    """R=2 x D=2, one replica per node. The second node is removed after the first checkpoint: the
    restart places one replica (launcher.min_replicas=1) and takes 2 micro-steps. After its first
    checkpoint a node joins again and a rank is killed: the next restart places two again."""
    want = tmp_path / "want"
    train(want, *ELASTIC)  # simulate, uninterrupted; Ray equals simulate bitwise (test_launch_ray.py)
    cluster, other, node_args = two_nodes
    run_dir = tmp_path / "run"
    job, ended = _start(run_dir, "launcher.max_failures=2", "launcher.min_replicas=1", "launcher.placement_timeout_s=5")

    def attempt(n: int) -> list[dict]:
        return [p for p in _placement(run_dir) if p["attempt"] == n]

    try:
        lost = first_checkpoint(run_dir, job.is_alive)
        cluster.remove_node(other)
        until(lambda: attempt(1), job.is_alive)  # attempt 1 is placed: the node that comes back is not in it
        until(lambda: _one_replica_checkpoint(run_dir), job.is_alive)
        rank = attempt(1)[1]["pid"]
        os.kill(rank, signal.SIGSTOP)  # attempt 1 waits for it while the node starts (seconds)
        cluster.add_node(**node_args)
        os.kill(rank, signal.SIGKILL)
    finally:
        job.join()
    if "error" in ended:
        raise ended["error"]
    sizes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("splitnet train: placement:")]
    assert sizes == [
        "splitnet train: placement: 1 of 2 replica(s) placed within launcher.placement_timeout_s=5s; attempt 1 runs "
        "on 1 replica(s) instead of 2 (launcher.min_replicas=1), with the same global batch",
        "splitnet train: placement: 2 of 2 replica(s) placed; attempt 2 runs on 2 replica(s) instead of 1 "
        "(launcher.min_replicas=1), with the same global batch"]
    assert ended["out"]["final"]["step"] == 8
    first = read_meta(run_dir / "checkpoints" / f"step_{lost:08d}")
    last = read_meta(complete_checkpoints(run_dir / "checkpoints")[-1])
    assert (first["replicas"], first["accumulate"], first["global_batch"]) == (2, 1, 32)
    assert (last["step"], last["replicas"], last["accumulate"], last["global_batch"]) == (8, 2, 1, 32)
    assert {(p["attempt"], p["replicas"]) for p in _placement(run_dir)} == {(2, 2)}
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    changes = size_changes([s for s in steps if s["kind"] == "step"])  # what `splitnet report` lists
    assert [(c["replicas"], c["accumulate"]) for c in changes] == [(2, 1), (1, 2), (2, 1)]
    assert lost < changes[1]["step"] < changes[2]["step"] <= 8
    assert_bitwise_equal(final_params(run_dir), final_params(want))


@pytest.mark.timeout(300)
def test_without_min_replicas_a_restart_that_cannot_place_every_replica_is_one_line(two_nodes, tmp_path):
    cluster, other, _ = two_nodes
    job, ended = _start(tmp_path / "run", "launcher.max_failures=1", "launcher.placement_timeout_s=3")
    try:
        first_checkpoint(tmp_path / "run", job.is_alive)
        cluster.remove_node(other)
    finally:
        job.join()
    error = ended.get("error")
    assert isinstance(error, RayLaunchError), ended  # launcher.min_replicas=null: not elastic unless asked
    assert str(error).startswith("placement: asked for 2 replica(s) x 2 rank(s) of CPU=1 each (STRICT_PACK: a "
                                 "replica on one node), 1 of 2 placed within launcher.placement_timeout_s=3s; ")
    assert "\n" not in str(error)
