"""Damaged training data: a shard that breaks off is named, with the samples it lost, once
per run, in the rank's log and in metrics.jsonl, and training goes on with the rest."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from splitnet.cli import main
from tests.test_preflight import shard_set
from tests.training import train


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_truncated_shard_among_readable_ones_is_named_once_and_training_goes_on(tmp_path):
    root = Path(shard_set(tmp_path / "set", 60, 20, 36))  # train-000000.tar, train-000001.tar: 30 each
    broken = (root / "train-000001.tar").resolve()
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    run = tmp_path / "run"
    out = train(run, "data=cifar10", f"data.root={root}", "data.workers=0", "mesh.devices=1", "batch_size=10",
                "eval.batch_size=10", "train.epochs=2", "optim.schedule=constant", "comm.timeout_s=60")
    assert out["final"]["epoch"] == 1 and out["final"]["step"] == 12  # 60 samples in batches of 10, twice
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    damaged = [r for r in records if r["kind"] == "data_skipped"]
    assert [(r["file"], r["epoch"]) for r in damaged] == [(str(broken), 0)]
    lost = damaged[0]["samples"]
    assert 0 < lost < 30 and "unreadable tar data" in damaged[0]["reason"]
    log = (run / "logs" / "rank0.log").read_text()
    assert log.count(f"data: skipped {lost} sample(s) of {broken} (unreadable tar data") == 1


def spoil_images(shard: Path, n: int) -> Path:
    """Overwrite the first ``n`` images of ``shard`` (by key) with bytes no decoder reads."""
    shard = shard.resolve()
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    garbage = sorted(m.name for m, _ in members if m.name.endswith(".png"))[:n]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = b"\x89PNG garbage" if member.name in garbage else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return shard


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_samples_in_every_ranks_rows_are_reported_by_the_reporting_rank(tmp_path):
    """Each of 2 devices decodes only its rows, so each meets only its rows' bad samples; the
    report (one rank's) joins them: all 10 garbage images, none twice."""
    root = Path(shard_set(tmp_path / "set", 60, 20, 36))
    shard = spoil_images(root / "train-000000.tar", 10)
    run = tmp_path / "run"
    out = train(run, "data=cifar10", f"data.root={root}", "mesh.devices=2", "batch_size=10", "train.epochs=1",
                "eval.enabled=false", "optim.schedule=constant", "comm.timeout_s=60")
    assert out["final"]["step"] == 6  # every sample once, each in one rank's rows
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    damaged = [r for r in records if r["kind"] == "data_skipped"]
    assert [(r["file"], r["samples"]) for r in damaged] == [(str(shard), 10)]
    assert "undecodable .png" in damaged[0]["reason"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_training_set_with_nothing_readable_is_the_jobs_one_line(tmp_path, capsys):
    root = Path(shard_set(tmp_path / "set", 30, 10, 36))  # one training shard
    only = (root / "train-000000.tar").resolve()
    only.write_bytes(only.read_bytes()[:700])  # the first header and a little of its image
    run = tmp_path / "run"
    rc = main(["train", "data=cifar10", f"data.root={root}", "mesh.devices=2", "batch_size=10", "eval.batch_size=10",
               "comm.timeout_s=60", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and re.fullmatch(
        rf"splitnet train: error: rank [01]: no readable sample in any of the shards \['{only}'\] "
        rf"\(its traceback: {run}/logs/rank[01]\.log\)", errors[0]), err
    assert "Traceback" not in err
    rank = errors[0].split("rank ")[1][0]
    log = (run / "logs" / f"rank{rank}.log").read_text()
    assert "Traceback (most recent call last)" in log and "DataError: no readable sample" in log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_bad_sample_raised_by_the_one_rank_that_decodes_it_is_the_jobs_one_line(tmp_path, capsys):
    """Only the rank whose row the sample is decodes it; its peer waits in the batch's gather
    and must not hang there, nor be the error the job reports."""
    root = Path(shard_set(tmp_path / "set", 60, 20, 36))
    shard = spoil_images(root / "train-000000.tar", 1)
    run = tmp_path / "run"
    rc = main(["train", "data=cifar10", f"data.root={root}", "data.on_error=raise", "mesh.devices=2", "batch_size=10",
               "train.epochs=1", "eval.enabled=false", "optim.schedule=constant", "comm.timeout_s=60",
               f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and re.match(
        rf"splitnet train: error: rank [01]: {shard}: sample '\d+': undecodable \.png: .* \(data\.on_error=raise; ",
        errors[0]), err
