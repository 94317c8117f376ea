"""splitnet train end to end through the simulate launcher (issue 6's tests)."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from splitnet.cli import main
from splitnet.errors import SplitnetError
from splitnet.launchers.core import WorkerFailed
from splitnet.model.reference import build_reference
from splitnet.model.spec import load_spec
from splitnet.train.checkpoint import CheckpointError, complete_checkpoints, merged_state, read_shard
from splitnet.train.curves import read_metrics
from splitnet.train.evaluate import evaluate_checkpoint
from splitnet.train.export import export_checkpoint
from tests.training import FAST, config, train


def last_checkpoint(result: dict) -> Path:
    return complete_checkpoints(Path(result["run_dir"]) / "checkpoints")[-1]


def shards(result: dict) -> list[dict]:
    """Every device's trained state, as the run's last checkpoint holds it."""
    ckpt = last_checkpoint(result)
    return [read_shard(ckpt, mp)["model"] for mp in range(result["plan"].devices)]


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """Two epochs of the default job (alexnet_small, 2 devices, embedded MNIST), smaller lr warm-up."""
    run_dir = tmp_path_factory.mktemp("embedded")
    return run_dir, train(run_dir, "train.epochs=2", "comm.timeout_s=120")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_default_job_learns_the_embedded_digits(embedded_run):
    run_dir, out = embedded_run
    records = read_metrics(run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "step" and "loss" in r]
    assert len(losses) == 70  # 2 epochs x 35 batches of 128 from 4,500 images
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5
    final = out["final"]
    assert final["val_samples"] == 500
    assert final["top1"] > 0.5, "chance is 10%"


@pytest.mark.timeout(240)
def test_run_folder_holds_metrics_logs_pictures_and_checkpoints(embedded_run):
    run_dir, out = embedded_run
    plan = out["plan"]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert {r["rank"] for r in records if r["kind"] == "step"} == {0}  # the reporting rank writes it alone
    for rank in (0, 1):
        own = records if rank == 0 else read_metrics(run_dir / "logs" / f"rank{rank}.metrics.jsonl")
        steps = [r for r in own if r["kind"] == "step" and r["rank"] == rank]
        assert len(steps) == 70
        expected = plan.expected(rank)
        for r in steps:  # the meter's per-step, per-layer bytes are the plan's
            assert r["comm"] == {k: round(f + b) for k, (f, b) in expected.items()}
            assert r["comm_bytes"] == round(sum((f + b for f, b in expected.values()), Fraction(0)))
            # each device decoded 64 of the 128 rows and received the other's: uint8 3x32x32
            # pixels, 3 float32 colour offsets and an int64 label a row, counted apart as data
            assert r["data_bytes"] == 64 * (3 * 32 * 32 + 3 * 4 + 8)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for name in ("curves.png", "plan.png", "plan.json", "plan.txt", "logs/rank0.log", "logs/rank1.log"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = complete_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in done] == ["step_00000035", "step_00000070"]
    assert sorted(p.name for p in done[-1].iterdir()) == ["meta.json", "rank0.pt", "rank1.pt"]


@pytest.mark.timeout(240)
def test_export_and_reference_evaluation_match_the_split_evaluation(embedded_run, tmp_path):
    run_dir, out = embedded_run
    state_file = export_checkpoint(run_dir, tmp_path / "model.pt")
    state = torch.load(state_file, weights_only=True)
    model = build_reference(load_spec(config()["model"]))
    model.load_state_dict(state)  # the reference loads the split model's weights
    result = evaluate_checkpoint(run_dir, config())
    assert result["val_samples"] == out["final"]["val_samples"] == 500
    assert abs(result["top1"] - out["final"]["top1"]) <= 1 / 500  # at most one near-tie flips
    assert abs(result["val_loss"] - out["final"]["val_loss"]) < 1e-4


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    return train(run_dir, *FAST, "train.epochs=2")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_resume_continues_the_same_run_bitwise(straight, tmp_path):
    train(tmp_path, *FAST, "train.epochs=1")
    # a checkpoint killed half-way (no meta.json, still .partial) must never be picked
    partial = tmp_path / "checkpoints" / "step_00000099.partial"
    partial.mkdir()
    (partial / "rank0.pt").write_bytes(b"half a file")
    resumed = train(tmp_path, *FAST, "train.epochs=2", "train.resume=auto")
    assert resumed["final"]["step"] == straight["final"]["step"] == 6
    for a, b in zip(shards(straight), shards(resumed), strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mesh", [["partition=pipeline", "partition.microbatches=2"],
                                  ["mesh.devices=3"]])  # 3 devices: uneven shards of every layer
@pytest.mark.slow
def test_resume_on_another_mesh(straight, tmp_path, mesh):
    train(tmp_path, *FAST, "train.epochs=1")
    resumed = train(tmp_path, *FAST, *mesh, "train.epochs=2", "train.resume=auto")
    want = merged_state(last_checkpoint(straight))
    got = merged_state(last_checkpoint(resumed))
    for name, value in want.items():
        assert torch.allclose(got[name], value, rtol=1e-4, atol=1e-6), name


@pytest.mark.timeout(120)
def test_incompatible_checkpoint_is_refused_before_spawning(straight, tmp_path):
    train(tmp_path, *FAST, "train.epochs=1", "train.max_steps=1")
    with pytest.raises(CheckpointError, match=r"different model: layer 'fc7': out 256 -> 128"):
        train(tmp_path, *FAST, "train.resume=auto", "model.layers.19.out=128")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_corrupt_checkpoint_names_the_file(tmp_path):
    train(tmp_path, *FAST, "train.epochs=1", "train.max_steps=1")
    ckpt = complete_checkpoints(tmp_path / "checkpoints")[-1]
    (ckpt / "rank1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WorkerFailed, match=r"rank1\.pt is corrupt") as failed:
        train(tmp_path, *FAST, "train.epochs=1", "train.resume=auto")
    # the job's one line names the rank and where its traceback went
    line = str(failed.value)
    assert line.startswith(f"rank 1: checkpoint {ckpt}: shard file rank1.pt is corrupt") and "\n" not in line
    assert line.endswith(f"(its traceback: {tmp_path}/logs/rank1.log)")
    assert "Traceback (most recent call last)" in (tmp_path / "logs" / "rank1.log").read_text()
    with pytest.raises(CheckpointError, match=r"rank1\.pt is corrupt"):
        export_checkpoint(ckpt, tmp_path / "out.pt")
    shutil.rmtree(ckpt)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out.pt")


@pytest.mark.timeout(120)
def test_cli_train_and_evaluate(tmp_path, capsys):
    assert main(["train", *FAST, "train.epochs=1", f"hydra.run.dir={tmp_path}"]) == 0
    assert "final held-out top-1 accuracy" in capsys.readouterr().out
    assert main(["evaluate", *FAST, f"ckpt={tmp_path}", "format=json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # after any log lines
    assert result["model"] == "alexnet_small" and result["val_samples"] == 16


@pytest.mark.timeout(120)
def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path, *FAST, "train.epochs=1", "logging.tensorboard=true")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in records])
    assert len(events.Scalars("val/top1")) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_mid_epoch_resume_refuses_a_changed_batch_and_a_finished_run_reports(tmp_path):
    train(tmp_path, *FAST, "train.epochs=1", "train.max_steps=1")  # stops after batch 1 of 3
    with pytest.raises(CheckpointError, match=r"stopped inside an epoch \(after batch 1\).*train.global_batch"):
        train(tmp_path, *FAST, "train.global_batch=32", "train.epochs=1", "train.resume=auto")
    done = train(tmp_path, *FAST, "train.epochs=1", "train.resume=auto")
    assert done["final"]["step"] == 3
    again = train(tmp_path, *FAST, "train.epochs=1", "train.resume=auto")  # nothing left to train
    assert again["final"]["step"] == 3
    assert again["final"]["top1"] == done["final"]["top1"]


@pytest.mark.parametrize(("overrides", "words"), [
    (["dtype_bytes=2"], "the runtime computes in float32"),
    (["eval.crops=3"], "eval.crops=3"),
])
def test_bad_training_configs_fail_before_any_process(tmp_path, monkeypatch, overrides, words):
    import splitnet.launchers.simulate

    def no_launch(*args, **kwargs):
        raise AssertionError("workers were started for a config that cannot run")

    monkeypatch.setattr(splitnet.launchers.simulate, "launch", no_launch)
    with pytest.raises(SplitnetError, match=words):
        train(tmp_path, *FAST, *overrides)
