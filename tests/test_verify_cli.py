"""``splitnet verify``: its JSON report, its exit codes, and its errors before any process."""

from __future__ import annotations

import json

import pytest
import yaml

import splitnet.launchers.simulate
from splitnet.cli import main
from tests.splitting import alexnet_small_12, assert_equivalent, verify_cfg


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_json_report_of_a_passing_split(capsys):
    args = ["partition=hybrid", "partition.exchange=reduce", "mesh.devices=2", "verify.steps=2"]
    assert main(["verify", *args, "format=json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"ok", "max_abs_diff", "exchanges"} <= set(report)
    assert set(report["max_abs_diff"]) == {"logits", "loss", "grads", "params"}
    assert report["exchanges"] and all(
        {"layer", "planned_bytes", "measured_bytes", "calls"} <= set(row) for row in report["exchanges"])
    assert report["ok"] is True
    assert_equivalent(report, verify_cfg(partition="hybrid", devices=2, steps=2, exchange="reduce"))


@pytest.mark.timeout(120)
def test_exits_non_zero_when_a_difference_exceeds_tolerance(capsys):
    # zero tolerance: the split's float32 round-off (its sums run in another order) is now too much
    assert main(["verify", "verify.steps=1", "verify.rtol=0", "verify.atol=0", "format=json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    # one step: no earlier update whose round-off the network could amplify, so no slack at all
    assert [report["tolerance"][k] for k in ("logits", "loss", "grads")] == [0.0, 0.0, 0.0]
    assert max(report["max_abs_diff"].values()) > 0  # real round-off, not a forced failure
    assert report["worst"]["grads"]["diff_over_tolerance"] == float("inf")
    assert all(row["ok"] and row["planned_bytes"] == row["measured_bytes"] for row in report["exchanges"])


def test_more_devices_than_a_layer_has_channels_fail_before_any_process(capsys, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("verify spawned ranks for a plan that cannot exist")

    monkeypatch.setattr(splitnet.launchers.simulate, "launch", no_launch)
    assert main(["verify", "mesh.devices=11"]) == 2
    err = capsys.readouterr().err
    assert "layer 'fc8' has out=10 channels, fewer than mesh.devices=11" in err
    assert "use mesh.devices <= 10 (the narrowest layer's width)" in err


def test_a_user_spec_from_config_dir_makes_four_devices_valid(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "small12.yaml").write_text(yaml.safe_dump(alexnet_small_12()))
    assert main(["plan", "--config-dir", str(tmp_path), "model=small12", "mesh.devices=4", "format=json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["model"], plan["mesh"]["devices"]) == ("alexnet_small12", 4)
    fc8 = next(p for p in plan["layers"] if p["name"] == "fc8")
    assert [s["out_channels"] for s in fc8["shards"]] == [[0, 3], [3, 6], [6, 9], [9, 12]]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_halo_in_chunks_over_three_devices_passes_under_nccls_rules(capsys):
    """The check docs/launchers.md gives before taking a split to GPUs: the middle rank both
    sends and receives its halo (one work under NCCL), and two lanes exchange halos at once."""
    args = ["comm.nccl_rules=true", "model=alexnet_small", "mesh.devices=3", "partition.chunks=2"]
    assert main(["verify", *args]) == 0
    out = capsys.readouterr().out
    norm1 = next(line.split() for line in out.splitlines() if line.startswith("norm1"))
    assert norm1[1] == norm1[2] != "0"  # the halo moved what the plan says, and moved something
    assert out.rstrip().splitlines()[-1].startswith("OK: the split equals the reference")
