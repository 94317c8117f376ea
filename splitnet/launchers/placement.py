"""Where ranks go on nodes: pure rules both real launchers share (no processes, no Ray).

Global ranks are replica-major (``rank = replica * D + device``), so the D ranks of one
replica are consecutive. The ranks of a replica exchange activations every step; replicas
only average gradients once per step. These functions say whether a layout keeps every
replica on one node, and whether a cluster can hold a replica on one node at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def spanning_replicas(world_size: int, devices: int, ranks_per_node: int) -> list[int]:
    """The replicas whose ranks fall on more than one node when nodes hold ``ranks_per_node``
    consecutive global ranks each (torchrun's layout: rank = node * nproc_per_node + local rank)."""
    return [r for r in range(world_size // devices)
            if (r * devices) // ranks_per_node != (r * devices + devices - 1) // ranks_per_node]


def fits(bundle: Mapping[str, float], count: int, node: Mapping[str, float]) -> bool:
    """Whether ``count`` copies of ``bundle`` fit a node's total resources."""
    return all(node.get(key, 0.0) + 1e-9 >= amount * count for key, amount in bundle.items() if amount)


def replica_strategy(bundle: Mapping[str, float], devices: int, nodes: Sequence[Mapping[str, float]]) -> str:
    """``STRICT_PACK`` (every rank of a replica on one node) when some node could hold a whole
    replica; otherwise ``PACK`` (as few nodes as Ray can manage)."""
    return "STRICT_PACK" if any(fits(bundle, devices, node) for node in nodes) else "PACK"


def describe_resources(resources: Mapping[str, float]) -> str:
    keys = sorted(k for k in resources if k in ("CPU", "GPU") or not k.startswith(("node:", "memory",
                                                                                      "object_store")))
    return ", ".join(f"{k}={resources[k]:g}" for k in keys) or "nothing"
