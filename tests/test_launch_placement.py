"""Placement rules shared by the torchrun and Ray launchers (pure: no processes)."""

from __future__ import annotations

import pytest

from splitnet.launchers.placement import (
    describe_resources,
    fits,
    min_replicas,
    replica_strategy,
    resolve_use_gpu,
    spanning_replicas,
)


def test_a_replica_spans_nodes_only_when_a_node_boundary_falls_inside_it():
    assert spanning_replicas(world_size=8, devices=2, ranks_per_node=4) == []
    assert spanning_replicas(world_size=2, devices=2, ranks_per_node=1) == [0]  # one process per node
    assert spanning_replicas(world_size=6, devices=2, ranks_per_node=3) == [1]  # ranks 2|3 on nodes 0|1
    assert spanning_replicas(world_size=8, devices=4, ranks_per_node=2) == [0, 1]


def test_a_replica_is_split_across_nodes_only_when_the_user_allows_it_and_no_node_holds_one():
    bundle = {"CPU": 1.0}
    assert replica_strategy(bundle, 2, [{"CPU": 0.0}, {"CPU": 3.0}, {"CPU": 2.0}], split_replicas=True) == "STRICT_PACK"
    assert replica_strategy(bundle, 4, [{"CPU": 3.0}, {"CPU": 2.0}], split_replicas=True) == "PACK"
    assert replica_strategy({"CPU": 0.5, "GPU": 1.0}, 2, [{"CPU": 8.0, "GPU": 1.0}], split_replicas=True) == "PACK"
    # by default never: the live nodes are not what an autoscaler can boot, so the placement waits
    assert replica_strategy(bundle, 4, [{"CPU": 3.0}, {"CPU": 2.0}]) == "STRICT_PACK"
    assert replica_strategy(bundle, 4, []) == "STRICT_PACK"
    assert fits({"CPU": 0.5, "GPU": 1.0}, 2, {"CPU": 1.0, "GPU": 2.0})


@pytest.mark.parametrize(("wanted", "backend", "joins", "gpus", "use"), [
    (True, "auto", True, 0, True), (False, "auto", True, 8, False),  # as asked
    ("auto", "auto", True, 8, True), ("auto", "nccl", True, 0, True),  # GPUs there, or asked for by the backend
    ("auto", "auto", False, 0, False),  # a local instance on a machine without GPUs: CPU ranks
])
def test_use_gpu_follows_the_request(wanted, backend, joins, gpus, use):
    assert resolve_use_gpu(wanted, backend, joins, gpus) is use


def test_auto_on_a_joined_cluster_without_gpus_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(ValueError, match="launcher.use_gpu=auto: the cluster has no GPU now .* set "
                                         "launcher.use_gpu=true to ask for GPU ranks, or launcher.use_gpu=false"):
        resolve_use_gpu("auto", "auto", True, 0)


def test_resources_are_described_without_ray_bookkeeping_keys():
    have = {"CPU": 3.0, "memory": 1e9, "object_store_memory": 1e8, "node:127.0.0.1": 1.0, "GPU": 1.0}
    assert describe_resources(have) == "CPU=3, GPU=1"


def test_min_replicas_is_all_replicas_unless_asked_and_a_bad_value_is_one_line():
    assert min_replicas(None, 4) == 4  # not elastic unless asked
    assert [min_replicas(n, 4) for n in (1, 4)] == [1, 4]
    for bad in (0, 5, True, "2", 1.0):
        with pytest.raises(ValueError, match=rf"^launcher.min_replicas={bad!r} must be an integer from 1 to "
                                             r"mesh.replicas=4, or null \(restart on every replica or not at all\)$"):
            min_replicas(bad, 4)
