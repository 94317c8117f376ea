"""cuda-convnet's 18% CIFAR-10 network (conf/model/cuda_convnet_18pct.yaml) trains as shipped."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import shipped_spec
from tests.training import FAST, train


def test_the_network_is_the_published_cfgs():
    spec = shipped_spec("cuda_convnet_18pct")
    convs = [layer for layer in spec.layers if layer.op == "conv"]
    assert [(c.out, c.kernel, c.pad) for c in convs] == [(32, 5, 2), (32, 5, 2), (64, 5, 2)]
    pools = [(layer.op, layer.kernel, layer.stride) for layer in spec.layers if layer.op.endswith("pool")]
    assert pools == [("maxpool", 3, 2), ("avgpool", 3, 2), ("avgpool", 3, 2)]
    norms = [layer for layer in spec.layers if layer.op == "rnorm"]
    assert [(n.size, n.alpha, n.beta, n.k) for n in norms] == [(3, 5e-5, 0.75, 1.0)] * 2
    # cuda-convnet's pools count ceil((32 - 3) / 2) + 1 = 16 outputs: 32 -> 16 -> 8 -> 4
    assert spec.layer("flatten").out_shape == (64 * 4 * 4, 1, 1)
    assert spec.num_classes == 10 and spec.layers[-1].op == "linear"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_it_trains_two_steps_on_cifar_shaped_data_over_two_devices(tmp_path):
    out = train(tmp_path, "model=cuda_convnet_18pct", *FAST, "train.max_steps=2", "mesh.devices=2",
                "eval.enabled=false", "optim.schedule=constant")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step" and r["rank"] == 0]
    assert [r["step"] for r in steps] == [1, 2]
    # conv1's N(0, 1e-4) weights make the first logits nearly equal: the loss starts at ln 10
    assert abs(steps[0]["loss"] - math.log(10)) < 0.05
    assert all(math.isfinite(r["loss"]) for r in steps)
    # per-map normalisation and pooling never talk; the connecting layers do
    talked = set(steps[0]["comm"])
    assert {"conv2", "conv3", "fc10"} <= talked
    assert not talked & {"pool1", "rnorm1", "pool2", "rnorm2", "pool3"}
    assert out["plan"].devices == 2
