from __future__ import annotations

import pytest

from splitnet.errors import SplitnetError
from splitnet.partition import Mesh, make_plan
from splitnet.partition.picture import draw_plan
from splitnet.units import human


def _svg(spec, partition, mesh, tmp_path) -> str:
    plan = make_plan(spec, partition, mesh, 128)
    path = draw_plan(spec, plan, tmp_path / "plan.svg")
    return path.read_text()


@pytest.mark.parametrize(("partition", "mesh"), [
    ({"strategy": "columns", "exchange": "gather"}, Mesh(devices=2)),
    ({"strategy": "columns", "exchange": "auto"}, Mesh(devices=4)),
    ({"strategy": "hybrid"}, Mesh(devices=4, replicas=2)),
    ({"strategy": "pipeline", "boundaries": ["conv3", "fc6"]}, Mesh(devices=3, replicas=2)),
])
def test_every_exchange_is_labelled_with_its_bytes(alexnet, tmp_path, partition, mesh):
    plan = make_plan(alexnet, partition, mesh, 128)
    svg = draw_plan(alexnet, plan, tmp_path / "plan.svg").read_text()
    for name, ex in plan.exchanges().items():
        assert f"{name}: " in svg, name
        assert human(float(max(ex.bytes_fwd, ex.bytes_bwd)), "B") in svg, name


def test_blocks_carry_local_shapes(alexnet, tmp_path):
    svg = _svg(alexnet, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=2), tmp_path)
    # one tower of Figure 2: 48, 128, 192, 192, 128 channels
    for label in ("conv1 48x55x55", "conv2 128x27x27", "conv3 192x13x13", "conv5 128x13x13", "fc6 2048",
                  "fc8 500", "device 1"):
        assert label in svg, label


def test_replicated_convs_are_marked(alexnet, tmp_path):
    svg = _svg(alexnet, {"strategy": "hybrid"}, Mesh(devices=4), tmp_path)
    assert "conv1 96x55x55" in svg and "1/4 of the batch" in svg


def test_png(alexnet_small, tmp_path):
    plan = make_plan(alexnet_small, {"strategy": "columns"}, Mesh(devices=2), 128)
    path = draw_plan(alexnet_small, plan, str(tmp_path / "sub" / "plan.png"))
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_unknown_format(alexnet_small, tmp_path):
    plan = make_plan(alexnet_small, {"strategy": "columns"}, Mesh(devices=2), 128)
    with pytest.raises(SplitnetError, match=r"unknown picture format '\.jpg'; use a file name ending in "
                                            r"\.svg, \.png, \.pdf"):
        draw_plan(alexnet_small, plan, tmp_path / "plan.jpg")
