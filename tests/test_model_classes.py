"""The classifier follows the data: every shipped model trains on any class count."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml

from splitnet.cli import main
from splitnet.model.spec import load_spec, with_classes
from splitnet.partition import Mesh, make_plan
from tests.conftest import CONF, SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("classes", [3, 100])
def test_every_shipped_model_takes_the_datas_class_count(name, classes):
    raw = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    spec = load_spec(with_classes(raw, classes))
    assert spec.num_classes == classes
    last = spec.layers[-1]
    assert last.params == classes * (last.in_shape[0] + 1)
    # the other layers are the file's
    assert load_spec(raw).layers[:-1] == spec.layers[:-1]
    # 3 outputs over 2 devices: shards of 1 and 2
    plan = make_plan(spec, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=2), 8)
    assert [s.out for s in plan.placement(last.name).shards] == [(0, classes // 2), (classes // 2, classes)]


def test_a_model_that_ends_without_weights_is_left_as_written():
    raw = {"name": "m", "input": {"channels": 1, "size": 4},
           "layers": [{"name": "f", "op": "flatten"}, {"name": "fc", "op": "linear", "out": 4},
                      {"name": "r", "op": "relu"}]}
    assert with_classes(raw, 3) == raw
    assert with_classes(raw | {"layers": raw["layers"][:2]}, 0)["layers"][-1]["out"] == 4  # data refuses 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_alexnet_trains_on_three_folders_written_by_splitnet_shards(tmp_path, capsys):
    """A new user's path: three class folders, `splitnet shards imagefolder`, then
    `model=alexnet data=imagenet data.num_classes=3`: fc8 becomes 3 wide (1 + 2 outputs over
    the 2 devices), and top-5, which 3 classes always reach, is not reported."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "src" / c / f"{i}.png")
    shards = tmp_path / "shards"
    assert main(["shards", "imagefolder", str(tmp_path / "src"), str(shards), "--resize", "16",
                 "--val-fraction", "0.25", "--no-progress"]) == 0
    capsys.readouterr()
    start = time.perf_counter()
    # the 16x16 images are scaled up to 224 (data.side) for alexnet's 224x224 input
    rc = main(["train", "model=alexnet", "data=imagenet", "data.num_classes=3", f"data.root={shards}",
               "data.side=224", "data.workers=0", "batch_size=4", "eval.batch_size=4", "train.max_steps=2",
               "comm.timeout_s=120", f"hydra.run.dir={tmp_path / 'run'}"])
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "final held-out top-1 accuracy" in out and "top-5" not in out and "3 images" in out
    assert "layer 'fc8' has 3 outputs, one per class (data.num_classes; the model file says 1000)" in err
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    fc8 = next(p for p in plan["layers"] if p["name"] == "fc8")
    assert [s["out_channels"] for s in fc8["shards"]] == [[0, 1], [1, 3]]
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert epochs and all("top5" not in e and 0.0 <= e["top1"] <= 1.0 for e in epochs)
    print(f"alexnet, 2 steps of 4 at 224x224 over 2 simulated devices: {seconds:.0f} s")
