"""Elastic Ray: a node lost for good, the job goes on with the replicas that still fit (issue 21).

A two-node Ray cluster of its own (the test removes a node, so it cannot share
test_launch_ray.py's), both nodes on 127.0.0.1, each with room for one replica of 2 ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading

import pytest

from splitnet.report.sweep import size_changes
from splitnet.train.checkpoint import complete_checkpoints, read_meta
from tests.launching import JOB, assert_bitwise_equal, final_params, first_checkpoint
from tests.training import train

# Read by Ray when it is imported: node addresses are 127.0.0.1 and Ray listens on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

pytestmark = pytest.mark.cluster

# 6 steps of a global batch of 32 (2 replicas x 16), a checkpoint every 2
ELASTIC = [*JOB, "data.train_batches=6", "mesh.replicas=2"]


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
            yield nodes, other
        finally:
            ray.shutdown()
            nodes.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(300)
def test_a_ray_job_that_loses_a_node_goes_on_with_one_replica_and_ends_bitwise_equal(two_nodes, tmp_path):
    want = tmp_path / "want"
    train(want, *ELASTIC)  # simulate, uninterrupted; Ray equals simulate bitwise (test_launch_ray.py)
    cluster, other = two_nodes
    run_dir = tmp_path / "run"
    finished = threading.Event()
    lost: list[int] = []

    def lose_node() -> None:
        lost.append(first_checkpoint(run_dir, lambda: not finished.is_set()))
        cluster.remove_node(other)

    killer = threading.Thread(target=lose_node)
    killer.start()
    try:
        out = train(run_dir, *ELASTIC, "launcher=ray", "launcher.max_failures=1", "launcher.min_replicas=1",
                    "launcher.placement_timeout_s=5")
    finally:
        finished.set()
        killer.join()
    assert len(lost) == 1 and out["final"]["step"] == 6
    before = read_meta(run_dir / "checkpoints" / f"step_{lost[0]:08d}")
    after = read_meta(complete_checkpoints(run_dir / "checkpoints")[-1])
    assert (before["replicas"], before["accumulate"], before["global_batch"]) == (2, 1, 32)
    assert (after["step"], after["replicas"], after["accumulate"], after["global_batch"]) == (6, 1, 2, 32)
    placement = json.loads((run_dir / "placement.json").read_text())
    assert {(p["attempt"], p["replicas"]) for p in placement} == {(1, 1)} and len(placement) == 2
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    changes = size_changes([s for s in steps if s["kind"] == "step"])
    assert [(c["replicas"], c["accumulate"]) for c in changes] == [(2, 1), (1, 2)]
    assert lost[0] < changes[1]["step"]  # the new size from a checkpoint after the first one
    assert_bitwise_equal(final_params(run_dir), final_params(want))
