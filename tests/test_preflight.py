"""Everything checkable is checked in the parent: each bad input fails with one line naming
the key, the value and the fix, and no worker process is ever started for it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from splitnet.cli import main
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ArraySource
from splitnet.errors import SplitnetError
from tests.training import train


def shard_set(root: Path, n_train: int, n_val: int, side: int) -> str:
    images = np.random.default_rng(0).integers(0, 256, size=(n_train + n_val, side, side, 3), dtype=np.uint8)
    labels = np.arange(n_train + n_val) % 10
    val = np.arange(n_train + n_val) >= n_train if n_val else None
    write_shard_set(ArraySource(images, labels, val_mask=val), root, per_shard=30, progress=False)
    return str(root)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sets")
    return {"full": shard_set(root / "full", 60, 20, 36),  # 2 train shards of 30, 1 val shard
            "train_only": shard_set(root / "train_only", 60, 0, 36),
            "small_images": shard_set(root / "small_images", 30, 10, 8)}


def test_too_few_samples_for_a_batch_is_one_line_before_any_worker(sets, tmp_path, capsys, no_workers):
    rc = main(["train", "data=cifar10", f"data.root={sets['full']}", f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == ["splitnet train: error: batch_size=128: data 'cifar10' has 60 training samples, fewer "
                      "than one global batch of mesh.replicas x micro-steps x batch_size = 1 x 1 x 128 = 128; "
                      "set batch_size <= 60 or use more data"]
    assert "Traceback" not in err
    assert no_workers == [] and multiprocessing.active_children() == []


@pytest.mark.parametrize(("data", "overrides", "words"), [
    ("train_only", [], r"data\.val='.*/val-\*\.tar' matches no shards: .*--val-fraction 0\.1.*eval\.enabled=false"),
    ("full", ["data.num_classes=4"], r"data\.num_classes=4 but .*lists 10 classes; set data\.num_classes=10"),
    ("small_images", ["data.side=null"], r"stores 8x8 images but model 'alexnet_small' takes 32x32 .*data\.side=36"),
    ("full", ["data.side=20"], r"data\.side=20 is smaller than the 32x32 input of model 'alexnet_small'"),
    ("full", ["model.input.channels=1"], r"model\.input\.channels=1 but data 'cifar10' holds RGB images"),
    ("full", ["mesh.devices=11"], r"layer 'fc8' has out=10 channels, fewer than mesh\.devices=11.*mesh\.devices <= 10"),
    ("full", ["mesh.replicas=2", "batch_size=32"], r"batch_size=32: .* 60 training samples, fewer than one global "
                                                   r"batch .* = 2 x 1 x 32 = 64; set batch_size <= 30"),
    # the global batch must fit, not one micro-step's: 2 micro-steps of 20 take 40 of 30 samples
    ("full", ["data.fraction=0.5", "batch_size=20", "train.accumulate=2"],
     r"has 30 training samples \(data\.fraction=0\.5 of 60\), fewer than one global batch of mesh\.replicas x "
     r"micro-steps x batch_size = 1 x 2 x 20 = 40; set batch_size <= 15"),
    ("full", ["eval.enabled=false"], r"optim\.schedule=plateau .* eval\.enabled=false .* optim\.schedule=step"),
    ("full", ["eval.batch_size=0"], r"eval\.batch_size=0 must be an integer >= 1"),
    ("full", ["eval.crops=3"], r"eval\.crops=3; valid: 1 \(centre\), 5 \(corners and centre\) or 10"),
])
def test_bad_input_fails_in_the_parent_naming_key_value_and_fix(sets, tmp_path, no_workers, data, overrides,
                                                                words):
    with pytest.raises(SplitnetError, match=words) as failed:
        train(tmp_path, "data=cifar10", f"data.root={sets[data]}", "batch_size=16", *overrides)
    assert "\n" not in str(failed.value)
    assert no_workers == [] and multiprocessing.active_children() == []


def test_a_model_ending_without_weights_must_match_the_class_count(sets, tmp_path, no_workers):
    """A classifier with weights takes data.num_classes; a weightless last layer keeps its width."""
    from splitnet.launchers import choose_launcher
    from splitnet.train.job import run_train
    from tests.training import config

    cfg = config("data=cifar10", f"data.root={sets['full']}", "batch_size=16")
    cfg["model"]["layers"][-1]["out"] = 12
    cfg["model"]["layers"].append({"name": "relu8", "op": "relu"})
    with pytest.raises(SplitnetError, match=r"data\.num_classes=10 .* ends in 12 outputs \(layer 'relu8', "
                                            r"without weights\); end the model in a conv or linear layer"):
        run_train(cfg, tmp_path, choose_launcher(cfg))
    assert no_workers == []


@pytest.mark.timeout(300)
def test_training_without_validation_on_request(sets, tmp_path, capsys):
    args = ["train", "data=cifar10", f"data.root={sets['train_only']}", "data.workers=0", "eval.enabled=false",
            "optim.schedule=constant", "mesh.devices=1", "batch_size=20", "train.epochs=1",
            f"hydra.run.dir={tmp_path}"]
    assert main(args) == 0
    assert "trained without validation (eval.enabled=false): epoch 1, step 3" in capsys.readouterr().out
    assert "not validated (eval.enabled=false)" in (tmp_path / "logs" / "rank0.log").read_text()


def test_launcher_ray_without_ray_installed_says_which_extra(tmp_path, monkeypatch, capsys, no_workers):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert main(["train", "launcher=ray", f"hydra.run.dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'splitnet train: error: launcher=ray needs Ray, an optional extra: pip install "splitnet[ray]"']
    assert no_workers == []
