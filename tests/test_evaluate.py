"""Exact evaluation: the split model, its replicas sharing the validation set, scores every
held-out image once (a last partial batch included, 1 crop and eval.crops=10, which is 5
here as the data does not flip) and agrees with the
single-device reference in the image count exactly and in the loss within round-off."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from splitnet.comm import Transport
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ArraySource
from splitnet.launchers.simulate import launch
from splitnet.model.reference import build_reference
from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.partition.plan import Plan
from splitnet.runtime import build_shard
from splitnet.train.evaluate import evaluate_reference, pad_rows

N_VAL = 23  # val shards of 5, 5, 5, 5, 3: replicas get 15 and 8 images, eval batches of 4 end partial

TINY = {"name": "tiny", "input": {"channels": 3, "size": 6}, "groups": 2, "init_std": "he", "layers": [
    {"name": "conv1", "op": "conv", "out": 8, "kernel": 3, "connect": "full"},
    {"name": "relu1", "op": "relu"},
    {"name": "conv2", "op": "conv", "out": 8, "kernel": 3, "pad": 1, "connect": "group"},
    {"name": "relu2", "op": "relu"},
    {"name": "flatten", "op": "flatten"},
    {"name": "fc3", "op": "linear", "out": 8, "connect": "full"},
    {"name": "relu3", "op": "relu"},
    {"name": "fc4", "op": "linear", "out": 4, "connect": "full"},
]}


def eval_job(rank: int, world: int, cfg: dict[str, Any]) -> dict[int, dict[str, Any]]:
    from splitnet.train.loop import evaluate

    spec, plan = load_spec(cfg["model"]), Plan.from_dict(cfg["plan"])
    transport = Transport(plan, rank, timeout_s=60)
    shard = build_shard(spec, plan, rank, seed=cfg["seed"], transport=transport)
    return {crops: evaluate(shard, transport, spec, plan, cfg, crops) for crops in (1, 10)}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    n = 20 + N_VAL
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    write_shard_set(ArraySource(images, np.arange(n) % 4, val_mask=np.arange(n) >= 20), root, per_shard=5,
                    progress=False)
    data = {"name": "random", "kind": "shards", "root": str(root), "num_classes": 4, "flip": False,
            "pca_std": 0.0}
    return {"model": TINY, "data": data, "seed": 3, "eval": {"batch_size": 4, "crops": 1}}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hybrid_replicas_score_every_image_once_like_the_reference(cfg):
    spec = load_spec(TINY)
    plan = make_plan(spec, {"strategy": "hybrid"}, Mesh(devices=2, replicas=2), 8, 4)
    assert plan.strategy == "hybrid" and plan.replicas == 2
    results = launch(eval_job, 4, {**cfg, "plan": plan.to_dict()}, timeout_s=60)
    reference = build_reference(spec, seed=cfg["seed"])
    for crops in (1, 10):
        want = evaluate_reference(reference, spec, {**cfg, "eval": {"batch_size": 4, "crops": crops}})
        assert want["val_samples"] == N_VAL
        for rank, result in enumerate(results):
            got = result[crops]
            assert got["val_samples"] == N_VAL, (rank, crops)  # the replicas' 15 + 8, each image once
            assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5), (rank, crops)
            assert abs(got["top1"] - want["top1"]) <= 1 / N_VAL  # at most one near-tie flips
            assert got == results[0][crops]  # every rank reports the same combined result


def test_pad_rows_appends_zero_rows_to_a_multiple():
    x = torch.ones(5, 3)
    padded = pad_rows(x, 4)
    assert padded.shape == (8, 3) and torch.equal(padded[:5], x) and not padded[5:].any()
    assert pad_rows(x, 5) is x


def test_a_multi_crop_scoring_also_scores_its_centre_crop_as_one_crop_does(cfg):
    spec = load_spec(TINY)
    model = build_reference(spec, seed=cfg["seed"])
    one = evaluate_reference(model, spec, cfg)
    several = evaluate_reference(model, spec, {**cfg, "eval": {"batch_size": 4, "crops": 10}})
    assert "top1_centre" not in one and several["val_samples"] == one["val_samples"] == N_VAL
    assert several["val_loss_centre"] == pytest.approx(one["val_loss"], rel=1e-5)
    assert abs(several["top1_centre"] - one["top1"]) <= 1 / N_VAL  # batched differently: one near-tie at most
    assert several["val_loss"] != pytest.approx(one["val_loss"], rel=1e-3)  # the average is another scoring
