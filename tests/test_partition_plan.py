from __future__ import annotations

import json
from fractions import Fraction

import pytest

from splitnet.cli import main
from splitnet.partition import Mesh, PartitionError, Plan, make_plan
from splitnet.partition.plan import ring_bytes

ALEXNET_PARAMS = 60_965_224
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("collective", "k", "expected"), [
    ("all_gather", 4, Fraction(3, 4) * 1000), ("reduce_scatter", 2, 500), ("all_reduce", 4, 1500),
    ("all_reduce", 2, 1000), ("send", 8, 1000), ("none", 4, 0), ("all_gather", 1, 0), ("all_reduce", 1, 0),
])
def test_ring_bytes(collective, k, expected):
    # NCCL bus bandwidth accounting: (k-1)/k x S for all-gather and reduce-scatter, 2(k-1)/k x S
    # for all-reduce, S for a point-to-point send
    assert ring_bytes(collective, 1000, k) == expected


def test_ring_bytes_unknown_collective():
    with pytest.raises(ValueError, match="unknown collective 'broadcast'"):
        ring_bytes("broadcast", 1000, 2)


def _plans(alexnet, alexnet_small):
    yield make_plan(alexnet, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=2), 128)
    yield make_plan(alexnet, {"strategy": "columns", "exchange": "auto"}, Mesh(devices=4, replicas=2), 128)
    yield make_plan(alexnet, {"strategy": "hybrid"}, Mesh(devices=4, replicas=3), 128)
    yield make_plan(alexnet, {"strategy": "pipeline", "boundaries": ["conv3", "fc6"], "microbatches": 4},
                    Mesh(devices=3, replicas=2), 128)
    yield make_plan(alexnet_small, {"strategy": "auto"}, Mesh(devices=2, device_memory=3 * 2**30), 64)
    yield make_plan(alexnet_small, {"strategy": "columns", "exchange": "auto"}, Mesh(devices=6), 64)


def test_round_trip(alexnet, alexnet_small):
    for plan in _plans(alexnet, alexnet_small):
        assert Plan.from_dict(plan.to_dict()) == plan
        assert Plan.from_dict(json.loads(plan.to_json())) == plan


def test_round_trip_keeps_halo_moves_and_read_ranges(alexnet_small):
    plan = make_plan(alexnet_small, {"strategy": "columns", "exchange": "auto"}, Mesh(devices=6), 64)
    back = Plan.from_dict(json.loads(plan.to_json()))
    halos = [p for p in plan.layers if p.exchange is not None and p.exchange.mode == "halo"]
    assert [p.name for p in halos] == ["norm1", "norm2"]
    for p in halos:
        assert back.placement(p.name).exchange.moves == p.exchange.moves != ()
    reads = {(p.name, s.rank): s.reads for p in plan.layers for s in p.shards if s.reads is not None}
    assert {("norm1", 1), ("conv2", 0)} <= set(reads)
    assert {(p.name, s.rank): s.reads for p in back.layers for s in p.shards if s.reads is not None} == reads


def test_replicas_sum_each_ranks_gradients(alexnet):
    plan = make_plan(alexnet, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=2, replicas=2), 128)
    ex = plan.exchanges()["replicas"]
    assert list(plan.exchanges())[-1] == "replicas"
    assert (ex.mode, ex.collective, ex.backward) == ("grads", "none", "all_reduce")
    # all-reduce over R replicas: 2(R-1)/R x the rank's parameter bytes, i.e. exactly them for R=2
    assert [ex.received(r) for r in range(2)] == [(0, ALEXNET_PARAMS // 2 * 4)] * 2
    # and they join the per-device bytes in
    alone = make_plan(alexnet, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=2), 128)
    assert [c.bytes_in - a.bytes_in for c, a in zip(plan.costs, alone.costs, strict=True)] == [
        ALEXNET_PARAMS // 2 * 4] * 2


def test_replicas_bytes_follow_each_stages_parameters(alexnet):
    plan = make_plan(alexnet, {"strategy": "pipeline", "boundaries": ["fc6"]}, Mesh(devices=2, replicas=4), 128)
    ex = plan.exchanges()["replicas"]
    stage0 = ALEXNET_PARAMS - (4096 * 9216 + 4096) - (4096 * 4096 + 4096) - (1000 * 4096 + 1000)
    stage1 = ALEXNET_PARAMS - stage0
    assert [ex.received(r) for r in range(2)] == [(0, Fraction(3, 2) * stage0 * 4),
                                                 (0, Fraction(3, 2) * stage1 * 4)]


def test_one_replica_has_no_replicas_row(alexnet_small):
    plan = make_plan(alexnet_small, {"strategy": "columns"}, Mesh(devices=2), 128)
    assert "replicas" not in plan.exchanges()


def test_expected_bytes_per_rank(alexnet):
    plan = make_plan(alexnet, {"strategy": "columns", "exchange": "gather"}, Mesh(devices=4), 128)
    for rank in range(4):
        expected = plan.expected(rank)
        assert list(expected) == list(plan.exchanges())
        assert sum(f + b for f, b in expected.values()) == plan.costs[rank].bytes_in
    assert plan.total_exchange_bytes == sum(c.bytes_in for c in plan.costs)


@pytest.mark.parametrize(("partition", "message"), [
    ({"strategy": "columns", "exchnage": "auto"},
     r"partition: unknown key\(s\) \['exchnage'\]; valid keys: \['balance', 'boundaries', 'chunks', 'exchange'"),
    ({"strategy": "tensor"}, r"partition.strategy='tensor'; valid: columns, pipeline, hybrid, auto"),
])
def test_bad_partition_config(alexnet_small, partition, message):
    with pytest.raises(PartitionError, match=message):
        make_plan(alexnet_small, partition, Mesh(devices=2), 128)


@pytest.mark.parametrize("batch", [0, -1, 1.5, True, "128"])
def test_bad_batch_size(alexnet_small, batch):
    with pytest.raises(PartitionError, match=rf"batch_size={batch!r} must be an integer >= 1"):
        make_plan(alexnet_small, {"strategy": "columns"}, Mesh(devices=2), batch)


# The CLI: one Hydra run per test, so a handful only.

def test_cli_json_keys_and_values(capsys, tmp_path):
    out = tmp_path / "plan.json"
    args = ["plan", "model=alexnet", "mesh.devices=2", "partition.exchange=gather", "format=json", f"out={out}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    d = json.loads(printed)
    assert json.loads(out.read_text()) == d
    assert {"strategy", "mesh", "batch_size", "layers", "devices", "totals"} <= set(d)
    assert (d["strategy"], d["mesh"], d["batch_size"]) == ("columns", {"devices": 2, "replicas": 1}, 128)
    conv3 = next(layer for layer in d["layers"] if layer["name"] == "conv3")
    assert conv3["shards"] == [{"rank": 0, "out_channels": [0, 192]}, {"rank": 1, "out_channels": [192, 384]}]
    assert {k: conv3["exchange"][k] for k in ("collective", "mode", "bytes_fwd", "bytes_bwd")} == {
        "collective": "all_gather", "mode": "gather", "bytes_fwd": 86_528 * 128, "bytes_bwd": 86_528 * 128}
    assert next(layer for layer in d["layers"] if layer["name"] == "relu3")["exchange"] is None
    assert [{k: dev[k] for k in ("rank", "param_count", "param_bytes", "grad_bytes", "optimizer_bytes")}
            for dev in d["devices"]] == [
        {"rank": r, "param_count": ALEXNET_PARAMS // 2, "param_bytes": ALEXNET_PARAMS * 2,
         "grad_bytes": ALEXNET_PARAMS * 2, "optimizer_bytes": ALEXNET_PARAMS * 2} for r in range(2)]
    assert all({"activation_bytes", "flops"} <= set(dev) for dev in d["devices"])
    assert d["totals"]["params"] == ALEXNET_PARAMS
    assert d["totals"]["exchange_bytes_per_step"] == sum(dev["bytes_in"] for dev in d["devices"])
    assert Plan.from_dict(d).to_dict() == d


@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_cli_picture(capsys, tmp_path, suffix):
    path = tmp_path / f"plan.{suffix}"
    assert main(["plan", "model=alexnet", "mesh.devices=2", "partition.exchange=gather", f"picture={path}"]) == 0
    assert "conv3" in capsys.readouterr().out     # the table is still printed
    data = path.read_bytes()
    if suffix == "png":
        assert data.startswith(PNG) and len(data) > 10_000
    else:
        text = data.decode()
        assert text.startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def test_cli_errors_are_clean(capsys):
    assert main(["plan", "model=alexnet_small", "mesh.devices=11"]) == 2
    assert "splitnet plan: error: columns: layer 'fc8' has out=10 channels" in capsys.readouterr().err
    assert main(["plan", "picture=plan.gif"]) == 2
    assert "unknown picture format '.gif'" in capsys.readouterr().err
