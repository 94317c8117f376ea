"""launcher=ray on a two-node Ray cluster simulated on this machine (every Ray process on
127.0.0.1): replicas placed whole on one node each, restarts after a SIGKILL'd rank that
end bitwise equal, the errors (unsatisfiable placement, unreachable address), and the same
job under simulate, torchrun on two c10d nodes and Ray ending bitwise equal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from splitnet.cli import main
from splitnet.launchers.core import free_port
from splitnet.launchers.ray import RayLaunchError
from tests.launching import (
    JOB,
    ROOT,
    assert_bitwise_equal,
    final_params,
    kill_after_first_checkpoint,
    loopback_rendezvous,
    simulate_params,
    start_torchrun,
)
from tests.test_launch_documented import TWO_STEPS
from tests.test_preflight import shard_set
from tests.training import train

# Read by Ray when it is imported: node addresses are 127.0.0.1 and Ray listens on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

pytestmark = pytest.mark.cluster  # every test here joins the two-node Ray cluster below


@pytest.fixture(scope="module")
def cluster():
    """Two nodes: 'a' (the head) with 3 CPUs and 'b' with 2."""
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="snr", dir="/tmp")  # Ray's unix socket paths must stay short
    os.makedirs(os.path.join(temp, "ray"))
    common = {"node_ip_address": "127.0.0.1", "temp_dir": temp, "object_store_memory": 80 * 1024**2}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)  # where Ray notes the cluster's address, instead of /tmp/ray
        nodes = Cluster()
        try:
            nodes.add_node(**common, num_cpus=3, include_dashboard=False)  # the first node is the head
            names = {nodes.head_node.node_id: "a", nodes.add_node(**common, num_cpus=2).node_id: "b"}
            ray.init(address=nodes.address, log_to_driver=True)
            yield names
        finally:
            ray.shutdown()
            nodes.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _placement(run_dir) -> list[dict]:
    return json.loads((run_dir / "placement.json").read_text())


@pytest.mark.timeout(600)
def test_each_replica_s_ranks_run_on_one_node(cluster, tmp_path):
    run_dir = tmp_path / "run"
    out = train(run_dir, *JOB, "launcher=ray", "mesh.replicas=2", "train.max_steps=2")
    assert sorted(r["rank"] for r in out["results"]) == [0, 1, 2, 3]
    where = {p["rank"]: cluster[p["node_id"]] for p in _placement(run_dir)}  # each rank reported its own node
    # node a (3 CPUs) cannot hold both replicas, so packing ranks in order would split replica 1
    assert where[0] == where[1] and where[2] == where[3] and where[0] != where[2], where
    # each rank's own log, and the step records of every rank but the reporting one (rank 0)
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == sorted(
        [f"rank{r}.log" for r in range(4)] + [f"rank{r}.metrics.jsonl" for r in range(1, 4)])


@pytest.mark.timeout(600)
def test_a_killed_rank_restarts_from_the_latest_checkpoint_and_ends_bitwise_equal(cluster, tmp_path):
    want = simulate_params()
    run_dir = tmp_path / "run"
    done = threading.Event()
    killed: list[int] = []

    def rank1_pid() -> int | None:
        places = _placement(run_dir) if (run_dir / "placement.json").exists() else []
        return next((p["pid"] for p in places if p["rank"] == 1 and p["attempt"] == 0), None)

    killer = threading.Thread(target=lambda: killed.append(
        kill_after_first_checkpoint(run_dir, rank1_pid, lambda: not done.is_set())))
    killer.start()
    try:
        train(run_dir, *JOB, "launcher=ray", "launcher.max_failures=1")
    finally:
        done.set()
        killer.join()
    assert len(killed) == 1
    assert {p["attempt"] for p in _placement(run_dir)} == {1}  # every rank was started again
    resumed = [line for line in (run_dir / "logs" / "rank1.log").read_text().splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and killed[0] <= int(resumed[0].split(" at step ")[1].split()[0]) < 12
    assert_bitwise_equal(final_params(run_dir), want)


@pytest.mark.timeout(300)
def test_a_splitnet_error_in_a_rank_is_one_line_on_the_drivers_console(cluster, tmp_path, capsys):
    root = Path(shard_set(tmp_path / "set", 30, 10, 36))  # one training shard, and nothing readable in it
    only = (root / "train-000000.tar").resolve()
    only.write_bytes(only.read_bytes()[:700])
    run = tmp_path / "run"
    rc = main(["train", "launcher=ray", "launcher.max_failures=0", "data=cifar10", f"data.root={root}",
               "mesh.devices=2", "batch_size=10", "eval.batch_size=10", "comm.timeout_s=60", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("splitnet train: error:")]
    assert len(errors) == 1 and re.fullmatch(
        rf"splitnet train: error: rank [01]: no readable sample in any of the shards \['{only}'\] "
        rf"\(its traceback: {run}/logs/rank[01]\.log\)", errors[0]), err[-3000:]


@pytest.mark.timeout(60)
def test_a_placement_no_node_can_satisfy_fails_after_the_timeout(cluster, tmp_path):
    with pytest.raises(RayLaunchError) as failed:
        train(tmp_path / "run", *JOB, "launcher=ray", "launcher.cpus_per_worker=4", "launcher.placement_timeout_s=2")
    message = str(failed.value)
    # never split silently: a replica waits for one node that holds it (launcher.split_replicas=false)
    assert message.startswith("placement: asked for 1 replica(s) x 2 rank(s) of CPU=4 each (STRICT_PACK: a replica "
                              "on one node), "
                              "0 of 1 placed within launcher.placement_timeout_s=2s; the cluster has 2 node(s): ")
    assert "CPU=3" in message and "CPU=2" in message
    assert "\n" not in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_no_cluster_answers_is_one_line(cluster, tmp_path, scheme):
    address = f"{scheme}127.0.0.1:{free_port()}"
    with pytest.raises(RayLaunchError) as failed:
        train(tmp_path / "run", *JOB, "launcher=ray", f"launcher.address='{address}'",
              "launcher.connect_timeout_s=5")
    assert str(failed.value).startswith(f"launcher.address={address!r}: no Ray cluster answers there within "
                                        "launcher.connect_timeout_s=5s")


@pytest.mark.timeout(600)
def test_simulate_torchrun_on_two_nodes_and_ray_end_bitwise_equal(cluster, tmp_path):
    want = simulate_params()
    with loopback_rendezvous("twonodes") as rendezvous:
        nodes = [start_torchrun(["--nnodes=2", "--nproc-per-node=1", *rendezvous, "--max-restarts=0"],
                                tmp_path, tmp_path / f"node{n}.txt") for n in range(2)]
        try:
            out = train(tmp_path / "ray", *JOB, "launcher=ray")
        finally:
            codes = [p.wait(timeout=240) for p in nodes]
    outputs = [(tmp_path / f"node{n}.txt").read_text() for n in range(2)]
    assert codes == [0, 0], outputs

    run_dir = tmp_path / "runs" / "torchrun-twonodes"  # named by the rendezvous id, the same on both nodes
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["torchrun-twonodes"]
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["rank0.log", "rank1.log", "rank1.metrics.jsonl"]
    both = "\n".join(outputs)
    assert both.count("final held-out top-1 accuracy") == 1  # only the reporting rank reports
    # one process per node and mesh.devices=2: the model-parallel group spans the two nodes
    assert both.count("split the model-parallel group of replica(s) [0] (mesh.devices=2) across nodes") == 1

    assert out["final"]["step"] == 12
    assert_bitwise_equal(final_params(tmp_path / "ray"), want)
    assert_bitwise_equal(final_params(run_dir), want)


RAY_STAND_IN = '''#!{python}
"""`ray job submit --address A -- CMD`: record the arguments, run CMD as the job server would,
with RAY_ADDRESS pointing at the cluster (here the test's two loopback nodes)."""
import json, os, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["LAUNCH_LOG"], "ray-args.json"), "w") as f:
    json.dump(args, f)
cmd = args[args.index("--") + 1:]
os.execvpe(cmd[0], cmd, {{**os.environ, "RAY_ADDRESS": os.environ["CLUSTER_GCS"]}})
'''


@pytest.mark.timeout(300)
def test_the_ray_job_script_trains_on_the_cluster_as_written(cluster, tmp_path):
    import ray

    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "ray").write_text(RAY_STAND_IN.format(python=sys.executable))
    (stand_ins / "ray").chmod(0o755)
    path = [str(stand_ins), str(Path(sys.executable).parent), os.environ["PATH"]]  # splitnet beside this python
    env = {**os.environ, "PATH": os.pathsep.join(path),
           "LAUNCH_LOG": str(tmp_path), "CLUSTER_GCS": ray.get_runtime_context().gcs_address,
           "RAY_ADDRESS": "http://127.0.0.1:8265", "RUN_ROOT": str(tmp_path / "shared"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # a CPU cluster says so (launcher.use_gpu=auto refuses to guess on a cluster without GPUs)
    done = subprocess.run(["bash", str(ROOT / "launch" / "ray-job.sh"), *TWO_STEPS, "launcher.use_gpu=false"],
                          cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    given = json.loads((tmp_path / "ray-args.json").read_text())
    assert given[:5] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--"]
    assert given[5:9] == ["splitnet", "train", "launcher=ray", "launcher.address=auto"]
    (run_dir,) = (tmp_path / "shared").iterdir()  # the script's own run folder under RUN_ROOT
    assert run_dir.name.startswith("ray-")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r.get("kind") == "step"] == [1, 2]
    nodes = {p["node_id"] for p in _placement(run_dir)}
    assert len(nodes) == 1 and nodes <= set(cluster)  # the replica's two ranks on one of the cluster's nodes
