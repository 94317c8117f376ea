"""``splitnet profile``: exact bytes against closed-form sums on a tiny spec, the meter
beside the plan, the time split and the picture."""

from __future__ import annotations

import json

import pytest
import yaml

TINY = {"name": "tiny", "input": {"channels": 3, "size": 8}, "groups": 2, "layers": [
    {"name": "conv1", "op": "conv", "out": 4, "kernel": 3, "pad": 1, "connect": "full"},
    {"name": "relu1", "op": "relu"},
    {"name": "flatten", "op": "flatten"},
    {"name": "fc", "op": "linear", "out": 6, "connect": "full"},
]}


@pytest.mark.timeout(180)
def test_profile_of_a_tiny_spec_over_two_devices(tmp_path, monkeypatch, capsys):
    from splitnet.cli import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    args = ["--config-dir", str(tmp_path), "model=tiny", "mesh.devices=2", "partition.exchange=gather",
            "batch_size=4", "profile.steps=2", "format=json"]
    assert main(["profile", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    # each rank: conv1 rows 2 of 4 (2 x 3 x 3 x 3 weights + 2 biases) and fc rows 3 of 6 (3 x 256 + 3)
    shard_bytes = 4 * (2 * 3 * 9 + 2 + 3 * 4 * 8 * 8 + 3)
    batch_bytes = 4 * 3 * 8 * 8 * 4 + 4 * 8  # float32 images, int64 labels
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    for r in report["ranks"]:
        parts = r["breakdown"]
        for key in ("parameters", "gradients", "optimizer"):
            assert parts[key]["largest"] == parts[key]["planned"] == shard_bytes, (key, parts[key])
        assert parts["input"]["largest"] == batch_bytes
        assert parts["exchange"]["largest"] >= 4 * 4 * 8 * 8 * 4  # fc's gathered input, all 4 channels
        assert r["measured_peak_bytes"] == r["allocator_peak_bytes"] == sum(p["at_peak"] for p in parts.values())
        assert r["planned_peak_bytes"] == sum(p["planned"] or 0 for p in parts.values())
        assert r["rss_peak_bytes"] > r["measured_peak_bytes"]
        assert 0 <= r["peer_wait_s"] <= r["blocked_s"] < r["step_s"]
        assert r["compute_s"] == pytest.approx(r["step_s"] - r["blocked_s"])
    rows = {x["layer"]: x for x in report["exchanges"]}
    # fc: all-gather of a 4 x 256 float32 input forward, reduce-scatter of its gradient back,
    # each device receiving half; the loss gathers the 4 x 6 logits
    assert {n: (x["planned_bytes"], x["measured_bytes"]) for n, x in rows.items()} == {
        "fc": (2 * 4096, 2 * 4096), "loss": (96, 96)}
    assert report["exchanges_ok"] is True
    assert (tmp_path / "profile.png").stat().st_size > 0


def test_a_plan_over_the_device_memory_cap_is_refused_before_any_process(monkeypatch, capsys):
    import splitnet.launchers.simulate
    from splitnet.cli import main

    def no_launch(*args, **kwargs):
        raise AssertionError("a plan that does not fit was launched")

    monkeypatch.setattr(splitnet.launchers.simulate, "launch", no_launch)
    assert main(["profile", "mesh.devices=1", "mesh.device_memory=100MiB"]) == 2
    err = capsys.readouterr().err
    assert "columns: the predicted peak per device (rank 0 " in err
    assert ("exceeds mesh.device_memory=104,857,600 bytes (100 MiB); the smallest mesh that fits is "
            "mesh.devices=2") in err
