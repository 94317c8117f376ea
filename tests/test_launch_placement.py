"""Placement rules shared by the torchrun and Ray launchers (pure: no processes)."""

from __future__ import annotations

from splitnet.launchers.placement import describe_resources, fits, replica_strategy, spanning_replicas


def test_a_replica_spans_nodes_only_when_a_node_boundary_falls_inside_it():
    assert spanning_replicas(world_size=8, devices=2, ranks_per_node=4) == []
    assert spanning_replicas(world_size=2, devices=2, ranks_per_node=1) == [0]  # one process per node
    assert spanning_replicas(world_size=6, devices=2, ranks_per_node=3) == [1]  # ranks 2|3 on nodes 0|1
    assert spanning_replicas(world_size=8, devices=4, ranks_per_node=2) == [0, 1]


def test_strict_pack_when_some_node_holds_a_whole_replica():
    bundle = {"CPU": 1.0}
    assert replica_strategy(bundle, 2, [{"CPU": 0.0}, {"CPU": 3.0}, {"CPU": 2.0}]) == "STRICT_PACK"
    assert replica_strategy(bundle, 4, [{"CPU": 3.0}, {"CPU": 2.0}]) == "PACK"
    assert replica_strategy({"CPU": 0.5, "GPU": 1.0}, 2, [{"CPU": 8.0, "GPU": 1.0}]) == "PACK"
    assert fits({"CPU": 0.5, "GPU": 1.0}, 2, {"CPU": 1.0, "GPU": 2.0})


def test_resources_are_described_without_ray_bookkeeping_keys():
    have = {"CPU": 3.0, "memory": 1e9, "object_store_memory": 1e8, "node:127.0.0.1": 1.0, "GPU": 1.0}
    assert describe_resources(have) == "CPU=3, GPU=1"
