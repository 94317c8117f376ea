"""The global batch across replica counts, accumulation, and preemption by SIGTERM (issue 21)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splitnet.comm import Transport
from splitnet.model.spec import load_spec, with_classes
from splitnet.partition import Mesh, make_plan
from splitnet.runtime import accumulated_step, build_shard
from splitnet.train.checkpoint import complete_checkpoints, read_meta
from splitnet.train.global_batch import GlobalBatchError, global_batch
from splitnet.train.loop import PREEMPTED_EXIT
from splitnet.train.preflight import preflight
from splitnet.train.restart import resumed
from tests.launching import JOB, ROOT, assert_bitwise_equal, final_params, simulate_params
from tests.training import FAST, config, train

# 3 steps an epoch of a global batch of 16: 2 replicas x 8, or 1 replica x 2 micro-steps x 8;
# 3 validation batches of 8: replica 0 scores two, replica 1 one
SMALL = [*FAST, "batch_size=8", "eval.batch_size=8", "data.val_batches=3", "launcher.threads=1"]


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("r2")
    out = train(run_dir, *SMALL, "mesh.replicas=2", "train.epochs=2")
    return final_params(run_dir), out["final"]


@pytest.mark.timeout(180)
def test_one_replica_accumulating_two_micro_steps_equals_two_replicas_bitwise(two_replicas, tmp_path):
    # the replicas' all-reduce and the accumulation add the same two numbers, then halve them
    out = train(tmp_path, *SMALL, "train.accumulate=2", "train.epochs=2")
    params, final = two_replicas
    assert_bitwise_equal(final_params(tmp_path), params)
    # the same network scores the same held-out images whatever the number of replicas
    one = out["final"]
    assert one["val_samples"] == final["val_samples"] == 24
    assert (one["top1"], one["top5"]) == (final["top1"], final["top5"])
    assert one["val_loss"] == pytest.approx(final["val_loss"], rel=1e-12)  # the replicas' sums meet in another order


@pytest.mark.timeout(180)
def test_a_run_that_loses_a_replica_keeps_its_global_batch_and_ends_bitwise_equal(two_replicas, tmp_path):
    train(tmp_path, *SMALL, "mesh.replicas=2", "train.epochs=2", "train.max_steps=2")  # stops mid-epoch
    resumed = train(tmp_path, *SMALL, "mesh.replicas=1", "train.epochs=2", "train.resume=auto")
    assert_bitwise_equal(final_params(tmp_path), two_replicas[0])
    meta = read_meta(complete_checkpoints(tmp_path / "checkpoints")[-1])
    assert (meta["global_batch"], meta["replicas"], meta["accumulate"]) == (16, 1, 2)
    assert resumed["final"]["step"] == 6


def test_a_restart_on_other_replicas_plans_again_and_keeps_the_global_batch(tmp_path):
    """What Ray's launcher.min_replicas hands train: the replicas it placed, before any checkpoint."""
    cfg = config(*FAST, "mesh.replicas=2")
    cfg = {**cfg, "model": with_classes(cfg["model"], cfg["data"]["num_classes"])}
    job = {**cfg, "plan": preflight(cfg, tmp_path).plan.to_dict(), "run_dir": str(tmp_path)}
    assert resumed(job) == job  # the same size and no checkpoint: the job starts again as it first did

    def on(replicas: int) -> dict:
        return resumed({**job, "mesh": {**job["mesh"], "replicas": replicas}})

    one = on(1)
    assert one["plan"]["mesh"]["replicas"] == 1 and one["train"]["global_batch"] == 32
    assert global_batch(one["train"], 16, 1) == (32, 2)
    assert on(2)["plan"] == job["plan"] and on(2)["train"]["global_batch"] is None
    with pytest.raises(GlobalBatchError, match=r"^train.global_batch=32 is not a multiple of mesh.replicas x "
                                               r"batch_size = 3 x 16 = 48; "):
        on(3)


def test_micro_steps_of_b_equal_one_batch_of_k_b_to_round_off():
    """K=2 x B=16 against K=1 x B=32 on one device: the same mean gradient, summed in another order."""
    cfg = config(*FAST)
    spec = load_spec(cfg["model"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, spec.input_channels, spec.input_size, spec.input_size, generator=gen)
    y = torch.randint(0, spec.num_classes, (32,), generator=gen)
    grads = []
    for micro_steps in (1, 2):
        plan = make_plan(spec, cfg["partition"], Mesh(1, 1), 32 // micro_steps)
        shard = build_shard(spec, plan, 0, seed=0, transport=Transport(plan, 0))
        accumulated_step(shard, x, y, Transport(plan, 0), 0, micro_steps)
        grads.append({n: p.grad for n, p in shard.named_parameters()})
    whole, accumulated = grads
    for name, g in whole.items():
        assert torch.allclose(accumulated[name], g, rtol=1e-5, atol=1e-7), name
    assert any(not torch.equal(accumulated[n], g) for n, g in whole.items())  # the order did differ


def _rank_process(parent: int, rank: int) -> int | None:
    """The simulate launcher's process of ``rank`` among ``parent``'s children."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, ppid = stat[stat.index("(") + 1:stat.rindex(")")], int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == parent and name == f"splitnet-rank{rank}":
            return int(entry.name)
    return None


@pytest.mark.timeout(240)
@pytest.mark.parametrize("target", ["rank 1", "parent"])  # the parent (docker stop) passes it on
def test_sigterm_checkpoints_at_a_step_boundary_exits_143_and_resumes_bitwise(tmp_path, target):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "splitnet", "train", *JOB, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    pid = None
    while pid is None and proc.poll() is None and time.monotonic() < deadline:
        if complete_checkpoints(run_dir / "checkpoints"):  # step 2 of 12: the signal lands mid-epoch
            pid = _rank_process(proc.pid, 1) if target == "rank 1" else proc.pid
        time.sleep(0.01)  # polling the file system, not standing in for synchronisation
    assert pid is not None, f"no checkpoint and {target} process to signal"
    os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT == 143, err
    assert "stopped by SIGTERM after step" in err and "train.resume=auto" in err
    latest = complete_checkpoints(run_dir / "checkpoints")[-1]
    meta = read_meta(latest)
    assert 2 <= meta["step"] <= 12 and meta["epoch"] == 0 and meta["batch_in_epoch"] == meta["step"]
    assert sorted(p.name for p in latest.iterdir()) == ["meta.json", "rank0.pt", "rank1.pt"]
    if target == "parent":  # resuming is the same as after a rank's signal
        return
    train(run_dir, *JOB, "train.resume=auto")
    assert_bitwise_equal(final_params(run_dir), simulate_params())
