"""Checkpoint files without processes: atomic publish, keep-K, what resume may pick, model diffs."""

from __future__ import annotations

import json

import pytest
import torch

from splitnet.train.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    find_checkpoint,
    model_difference,
    publish,
    read_meta,
    read_shard,
    write_shard,
)
from tests.training import config


def write(root, step, value, keep=3):
    write_shard(root, step, 0, {"model": {"w": torch.full((2,), float(value))}, "momentum": {}})
    return publish(root, step, {"step": step, "plan": {}, "config": {}}, keep)


def test_publish_is_atomic_and_keeps_the_last_k(tmp_path):
    for step in (1, 2, 3, 4):
        write(tmp_path, step, step, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    # written but not published (killed before rank 0's rename): never a candidate
    write_shard(tmp_path, 5, 0, {"model": {}, "momentum": {}})
    assert (tmp_path / "step_00000005.partial" / "rank0.pt").exists()
    assert find_checkpoint(tmp_path).name == "step_00000004"
    assert read_meta(find_checkpoint(tmp_path))["format"] == 1


def test_the_same_step_published_twice_keeps_the_newer_and_never_has_no_checkpoint(tmp_path):
    write(tmp_path, 7, 1.0)
    final = write(tmp_path, 7, 2.0)
    assert torch.equal(read_shard(final, 0)["model"]["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000007"]


def test_stale_partial_folders_are_swept(tmp_path):
    write_shard(tmp_path, 3, 0, {"model": {}, "momentum": {}})  # a run killed while writing step 3
    write(tmp_path, 8, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000008"]


def test_corrupt_meta_and_foreign_files_are_named(tmp_path):
    final = write(tmp_path, 1, 1.0)
    (final / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is unreadable or corrupt"):
        read_meta(final)
    (final / "meta.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="not a splitnet checkpoint"):
        read_meta(final)
    torch.save({"something": 1}, final / "rank0.pt")
    with pytest.raises(CheckpointError, match="rank0.pt does not hold model and momentum"):
        read_shard(final, 0)
    with pytest.raises(CheckpointError, match="rank3.pt is missing"):
        read_shard(final, 3)


def test_model_difference_compares_meaning_not_spelling():
    model = config()["model"]
    spelled_out = json.loads(json.dumps(model))
    spelled_out["layers"][0]["stride"] = 1  # the default, written out
    assert model_difference(model, spelled_out) is None
    other = json.loads(json.dumps(model))
    other["layers"][-1]["out"] = 12
    assert model_difference(model, other) == "layer 'fc8': out 10 -> 12"
