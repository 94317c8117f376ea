"""``train.precision=bf16`` and ``train.channels_last``: forward under bf16 autocast with float32
master weights; every exchange carries bf16, so the plan's and the meter's bytes halve while
the weights, their gradient sums and the optimizer stay float32. ``verify`` holds the split
against the reference computing in bf16 too (its tolerance: splitnet/verify.py)."""

from __future__ import annotations

import json

import pytest

from splitnet.errors import SplitnetError
from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.train.preflight import compute_bytes
from splitnet.verify import run_verify
from tests.splitting import model_dict, plan_of, verify_cfg
from tests.training import train


@pytest.mark.parametrize(("partition", "devices", "replicas"), [("columns", 3, 1), ("hybrid", 2, 2)])
def test_bf16_halves_every_activation_exchange_and_keeps_the_weights_float32(partition, devices, replicas):
    spec = load_spec(model_dict("alexnet_small"))
    fp32, bf16 = (make_plan(spec, {"strategy": partition, "chunks": 1}, Mesh(devices, replicas), 8, b)
                  for b in (4, 2))
    for name, ex in fp32.exchanges().items():
        half = bf16.exchanges()[name]
        if ex.mode == "grads":  # gradient sums of float32 master weights
            assert (half.bytes_fwd, half.bytes_bwd) == (ex.bytes_fwd, ex.bytes_bwd), name
        else:
            assert (half.bytes_fwd, half.bytes_bwd) == (ex.bytes_fwd / 2, ex.bytes_bwd / 2), name
    assert [c.param_bytes for c in bf16.costs] == [c.param_bytes for c in fp32.costs]


def _bf16(cfg: dict) -> dict:
    return {**cfg, "train": {"precision": "bf16"}}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cfg", [
    pytest.param(_bf16(verify_cfg(devices=3, chunks=2, exchange="auto")), id="columns-D3-halos-chunks2"),
    pytest.param(_bf16(verify_cfg(partition="pipeline", devices=2, microbatches=2)), id="pipeline-D2-M2"),
    pytest.param(_bf16(verify_cfg(partition="hybrid", devices=2, exchange="gather")), id="hybrid-D2"),
])
@pytest.mark.slow
def test_the_bf16_split_equals_the_bf16_reference_moving_half_the_bytes(cfg):
    report = run_verify(cfg)
    assert report["ok"], report
    # the sharp checks in bf16 (see verify.py): logits and loss, and the bytes
    for key in ("logits", "loss"):
        assert report["max_rel_diff"][key] <= cfg["verify"]["rtol_bf16"], report["max_rel_diff"]
    plan, fp32 = plan_of(cfg), plan_of({**cfg, "train": {"precision": "fp32"}})
    world = plan.devices * plan.replicas
    rows = {row["layer"]: row for row in report["exchanges"]}
    assert rows
    for name, row in rows.items():
        planned = [round(sum(sum(p.exchanges()[name].received(r % p.devices)) for r in range(world)))
                   for p in (plan, fp32)]
        halved = planned[1] if plan.exchanges()[name].mode == "grads" else planned[1] // 2  # fp32 weights' sums
        assert row["measured_bytes"] == row["planned_bytes"] == planned[0] == halved > 0, row
    assert [row["allocated"] for row in report["param_bytes"]] == [c.param_bytes for c in fp32.costs] * plan.replicas


def test_an_unknown_precision_is_one_line_naming_the_key():
    with pytest.raises(SplitnetError, match=r"train.precision='fp16'; valid: fp32, bf16"):
        compute_bytes({"train": {"precision": "fp16"}})


def _steps(run_dir) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "step"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bf16_and_channels_last_train(tmp_path):
    job = ["data=synthetic", "data.num_classes=10", "data.train_batches=2", "data.val_batches=1", "batch_size=16",
           "eval.batch_size=16", "train.epochs=1", "comm.timeout_s=60", "launcher.threads=1"]
    runs = {name: tmp_path / name for name in ("fp32", "channels_last", "bf16")}
    train(runs["fp32"], *job)
    train(runs["channels_last"], *job, "train.channels_last=true")
    train(runs["bf16"], *job, "train.precision=bf16")
    fp32, nhwc, bf16 = (_steps(runs[name]) for name in ("fp32", "channels_last", "bf16"))
    # NHWC is a layout: the same network within float32 round-off
    assert [r["loss"] for r in nhwc] == pytest.approx([r["loss"] for r in fp32], rel=1e-5)
    # bf16 moves half the bytes at every exchange (this job has no gradient sums: one replica)
    assert [r["comm"] for r in bf16] == [{k: v // 2 for k, v in r["comm"].items()} for r in fp32]
    assert [r["loss"] for r in bf16] == pytest.approx([r["loss"] for r in fp32], rel=5e-2)
