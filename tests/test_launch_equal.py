"""The same job under three launchers: simulate, torchrun on two nodes (c10d rendezvous on
127.0.0.1, one process each) and a local Ray instance end with bitwise-equal parameters."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from splitnet.launchers.simulate import free_port
from tests.launching import JOB, assert_bitwise_equal, final_params, simulate_params, start_torchrun
from tests.training import train


@pytest.mark.timeout(300)
def test_simulate_torchrun_on_two_nodes_and_ray_end_bitwise_equal(tmp_path):
    want = simulate_params()
    port = free_port()
    nodes = [start_torchrun(["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                             f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=twonodes", "--max-restarts=0"],
                            tmp_path, tmp_path / f"node{n}.txt") for n in range(2)]
    ray_temp = tempfile.mkdtemp(prefix="snr", dir="/tmp")  # Ray's unix socket paths must stay short
    try:
        out = train(tmp_path / "ray", *JOB, "launcher=ray", f"launcher.temp_dir={ray_temp}")
    finally:
        codes = [p.wait(timeout=240) for p in nodes]
        shutil.rmtree(ray_temp, ignore_errors=True)
    outputs = [(tmp_path / f"node{n}.txt").read_text() for n in range(2)]
    assert codes == [0, 0], outputs

    run_dir = tmp_path / "runs" / "torchrun-twonodes"  # named by the rendezvous id, the same on both nodes
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["torchrun-twonodes"]
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    both = "\n".join(outputs)
    assert both.count("final held-out top-1 accuracy") == 1  # only the reporting rank reports
    # one process per node and mesh.devices=2: the model-parallel group spans the two nodes
    assert both.count("split the model-parallel group of replica(s) [0] (mesh.devices=2) across nodes") == 1

    assert out["final"]["step"] == 12
    assert_bitwise_equal(final_params(tmp_path / "ray"), want)
    assert_bitwise_equal(final_params(run_dir), want)
