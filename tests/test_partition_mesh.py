from __future__ import annotations

import pytest

from splitnet.partition import Mesh, MeshError, parse_bytes, replicas_for_world


@pytest.mark.parametrize(("text", "expected"), [
    ("3GiB", 3 * 2**30),            # a GTX 580
    ("3 gib", 3 * 2**30),
    ("512MiB", 512 * 2**20),
    ("1.5GB", 1_500_000_000),
    ("64K", 64_000),
    ("100B", 100),
    ("2048", 2048),
    (1024, 1024),
    (None, None),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["three GiB", "3XB", "-1GiB", "", True])
def test_parse_bytes_rejects_what_is_not_a_size(bad):
    with pytest.raises(MeshError, match="mesh.device_memory=.*3GiB"):
        parse_bytes(bad)


def test_rank_layout_model_parallel_ranks_are_consecutive():
    mesh = Mesh(devices=3, replicas=2)
    assert mesh.world_size == 6
    # global rank = replica * D + device: replica 0 holds ranks 0-2, replica 1 ranks 3-5
    assert [mesh.coords(r) for r in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert all(mesh.rank(*mesh.coords(r)) == r for r in range(6))
    assert mesh.model_group(0) == [0, 1, 2]
    assert mesh.model_group(1) == [3, 4, 5]
    assert mesh.replica_group(0) == [0, 3]
    assert mesh.replica_group(2) == [2, 5]


def test_coords_outside_the_mesh():
    with pytest.raises(MeshError, match="rank 6 outside a mesh of 6 ranks"):
        Mesh(devices=3, replicas=2).coords(6)
    with pytest.raises(MeshError, match="rank -1"):
        Mesh(devices=3, replicas=2).coords(-1)


@pytest.mark.parametrize(("key", "value"), [
    ("devices", 0), ("devices", -2), ("devices", 1.5), ("devices", True), ("devices", "2"),
    ("replicas", 0), ("replicas", None),
])
def test_degrees_must_be_positive_integers(key, value):
    with pytest.raises(MeshError, match=rf"mesh\.{key}={value!r} must be an integer >= 1"):
        Mesh(**{key: value})


@pytest.mark.parametrize(("key", "value"), [
    ("link_gbps", 0), ("link_gbps", -1.0), ("link_gbps", "fast"),
    ("device_tflops", 0.0), ("device_tflops", None),
])
def test_bandwidth_and_throughput_must_be_positive_numbers(key, value):
    with pytest.raises(MeshError, match=rf"mesh\.{key}={value!r} must be > 0"):
        Mesh(**{key: value})


@pytest.mark.parametrize("value", [0, -5, "0B"])
def test_device_memory_must_be_positive(value):
    with pytest.raises(MeshError, match=r"mesh\.device_memory=.* must be > 0"):
        Mesh.from_dict({"device_memory": value})


def test_from_dict_parses_sizes_and_round_trips():
    mesh = Mesh.from_dict({"devices": 4, "replicas": 2, "device_memory": "3GiB", "link_gbps": 10.0,
                           "device_tflops": 2.0})
    assert mesh == Mesh(4, 2, 3 * 2**30, 10.0, 2.0)
    assert Mesh.from_dict(mesh.to_dict()) == mesh


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(MeshError, match=r"mesh: unknown key\(s\) \['gpus'\]; valid keys: .*'devices'"):
        Mesh.from_dict({"gpus": 2})


@pytest.mark.parametrize(("world", "devices", "replicas", "expected"), [
    (8, 2, None, 4),    # README's 8-GPU line: mesh.replicas left null
    (2, 2, None, 1),
    (6, 3, None, 2),
    (1, 1, None, 1),
    (4, 2, 2, 2),       # a given value that fits is kept
])
def test_replicas_for_world_derives_or_keeps(world, devices, replicas, expected):
    assert replicas_for_world(world, devices, replicas) == expected


@pytest.mark.parametrize(("world", "devices", "replicas", "message"), [
    (6, 4, None, r"torchrun started 6 rank\(s\), which mesh.devices=4 does not divide.*multiple of 4"),
    (1, 2, None, r"started 1 rank\(s\), which mesh.devices=2 does not divide"),
    (8, 2, 2, r"mesh.replicas x mesh.devices = 2 x 2 = 4; start 4 ranks or set mesh.replicas=null"),
    (4, 0, None, r"mesh.devices=0 must be an integer >= 1"),
    (4, 2, 0, r"mesh.replicas=0 must be an integer >= 1, or null"),
])
def test_replicas_for_world_refuses_in_one_line(world, devices, replicas, message):
    with pytest.raises(MeshError, match=message) as caught:
        replicas_for_world(world, devices, replicas, started_by="torchrun")
    assert "\n" not in str(caught.value)
