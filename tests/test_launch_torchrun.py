"""launcher=torchrun: real torchrun processes on 127.0.0.1, a restart that resumes bitwise,
one agreed run folder, and the errors before any collective. (Two nodes by c10d rendezvous:
test_launch_ray.py, beside Ray.)"""

from __future__ import annotations

import os
import re
import signal

import pytest

from splitnet.cli import main
from splitnet.launchers.torchrun import TorchrunError, adapt_config, backend, run_folder_override, torchrun_env
from splitnet.partition import MeshError
from tests.launching import (
    JOB,
    assert_bitwise_equal,
    final_params,
    kill_after_first_checkpoint,
    loopback_rendezvous,
    rank_pid,
    simulate_params,
    start_torchrun,
    stop_after_first_checkpoint,
)
from tests.training import config


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_a_killed_rank_restarts_from_the_latest_checkpoint_and_ends_bitwise_equal(tmp_path):
    run_dir = tmp_path / "run"
    with loopback_rendezvous("restart") as rendezvous:
        proc = start_torchrun([*rendezvous, "--nproc-per-node=2", "--max-restarts=1"], tmp_path,
                              tmp_path / "out.txt", f"train.run_dir={run_dir}")
        killed_at = kill_after_first_checkpoint(run_dir, lambda: rank_pid(str(run_dir), 1),
                                                lambda: proc.poll() is None)
        assert proc.wait(timeout=180) == 0, (tmp_path / "out.txt").read_text()
    resumed = [line for line in (run_dir / "logs" / "rank1.log").read_text().splitlines() if "resumed from" in line]
    assert len(resumed) == 1
    step = int(resumed[0].split(" at step ")[1].split()[0])
    assert killed_at <= step < 12
    assert_bitwise_equal(final_params(run_dir), simulate_params())


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_a_stalled_peer_is_one_line_naming_rank_layer_and_collective_on_the_console_and_in_torchruns_error(
        tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out.txt"
    with loopback_rendezvous("stall") as rendezvous:
        proc = start_torchrun([*rendezvous, "--nproc-per-node=2"], tmp_path, out, f"train.run_dir={run_dir}",
                              "comm.timeout_s=15")
        pid = None

        def stop_rank_1() -> int | None:  # SIGSTOP: alive, connections open, silent
            nonlocal pid
            pid = rank_pid(str(run_dir), 1)
            return pid

        stop_after_first_checkpoint(run_dir, stop_rank_1, lambda: proc.poll() is None)
        try:
            assert proc.wait(timeout=300) != 0
        finally:
            if pid is not None and rank_pid(str(run_dir), 1) == pid:
                os.kill(pid, signal.SIGKILL)
    text = out.read_text()
    line = re.search(r"splitnet train: error: rank 0: the (\w+) at layer '([\w.]+)' did not complete within "
                     r"comm.timeout_s=15s: a peer went silent[^\n]*", text)
    assert line, text[-4000:]
    assert f"its traceback: {run_dir}/logs/rank0.log" in line.group(0)
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "Traceback (most recent call last)" in log and "StalledExchange" in log
    # torchrun's own summary carries the message (its error file), not "error_file: <N/A>"
    summary = text[text.index("ChildFailedError"):] if "ChildFailedError" in text else text
    assert "did not complete within comm.timeout_s=15s" in summary, text[-4000:]


def _torchrun_env(monkeypatch, world: int, rank: int = 0, run_id: str = "job7") -> None:
    for key, value in {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world,
                       "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": 0}.items():
        monkeypatch.setenv(key, str(value))


@pytest.mark.timeout(60)
def test_a_world_size_the_mesh_does_not_match_is_one_line_before_any_collective(tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    _torchrun_env(monkeypatch, world=3)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "launcher=torchrun", *JOB, "mesh.replicas=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["splitnet train: error: torchrun started 3 rank(s) but mesh.replicas x mesh.devices = "
                   "1 x 2 = 2; start 2 ranks or set mesh.replicas=null to derive it"]
    # the default (mesh.replicas=null) derives R from the world, which mesh.devices=2 does not divide
    assert main(["train", "launcher=torchrun", *JOB]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["splitnet train: error: torchrun started 3 rank(s), which mesh.devices=2 does not divide: "
                   "mesh.replicas=null needs a world of replicas x 2 ranks; start a multiple of 2 ranks or change "
                   "mesh.devices"]
    assert not dist.is_initialized()


def test_mesh_replicas_null_is_derived_from_the_world_size(monkeypatch):
    cfg = config("launcher=torchrun", "mesh.replicas=null", "mesh.devices=2")
    _torchrun_env(monkeypatch, world=6)
    assert adapt_config(cfg)["mesh"]["replicas"] == 3
    _torchrun_env(monkeypatch, world=5)
    with pytest.raises(MeshError, match=r"torchrun started 5 rank\(s\), which mesh.devices=2 does not divide"):
        adapt_config(cfg)


def test_every_rank_agrees_on_one_run_folder_and_only_rank_0_writes_hydra_files():
    env = {"TORCHELASTIC_RUN_ID": "abc", "RANK": "0"}
    assert run_folder_override(["x=1"], env) == ["hydra.run.dir=runs/torchrun-abc"]
    assert run_folder_override(["train.run_dir=/shared/r"], {**env, "RANK": "3"}) == [
        "hydra.run.dir=/shared/r", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    assert run_folder_override(["x=1"], {"RANK": "0"}) == []  # not under torchrun
    with pytest.raises(TorchrunError, match="--rdzv-id is 'none'"):
        run_folder_override([], {**env, "TORCHELASTIC_RUN_ID": "none"})


def test_backend_is_nccl_only_with_cuda():
    assert backend("auto", cuda=True) == "nccl"
    assert backend("auto", cuda=False) == "gloo"
    assert backend("gloo", cuda=True) == "gloo"
    with pytest.raises(TorchrunError, match="comm.backend=nccl but this process sees no CUDA device"):
        backend("nccl", cuda=False)
    with pytest.raises(TorchrunError, match="comm.backend='mpi'; valid: auto, nccl, gloo"):
        backend("mpi", cuda=False)


def test_launcher_torchrun_outside_torchrun_says_how_to_start_it():
    with pytest.raises(TorchrunError, match=r"RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE not set: start it as "
                                            r"`torchrun --nproc-per-node=N -m splitnet train launcher=torchrun"):
        torchrun_env({})
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "TORCHELASTIC_RESTART_COUNT": "2"}
    assert torchrun_env(env) == {"rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2,
                                 "restart_count": 2}
