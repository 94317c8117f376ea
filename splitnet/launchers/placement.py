"""Where ranks go on nodes: pure rules both real launchers share (no processes, no Ray).

Global ranks are replica-major (``rank = replica * D + device``), so the D ranks of one
replica are consecutive. The ranks of a replica exchange activations every step; replicas
only average gradients once per step. These functions say whether a layout keeps every
replica on one node, whether a cluster can hold a replica on one node at all, and how few
replicas an elastic restart may keep.
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


def replica_strategy(bundle: Mapping[str, float], devices: int, nodes: Sequence[Mapping[str, float]],
                     split_replicas: bool = False) -> str:
    """``STRICT_PACK`` (every rank of a replica on one node), unless the user allowed replicas
    to span nodes (``launcher.split_replicas``) and no live node could hold one: then ``PACK``.
    The live nodes are not the cluster an autoscaler can grow, so without that permission a
    replica is never split: the placement waits for a node that holds it."""
    if split_replicas and not any(fits(bundle, devices, node) for node in nodes):
        return "PACK"
    return "STRICT_PACK"


def min_replicas(value: object, replicas: int) -> int:
    """``launcher.min_replicas``: the fewest replicas a restart may go on with (null: all
    ``mesh.replicas``, so a job is elastic only when asked)."""
    if value is None:
        return replicas
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= replicas:
        raise ValueError(f"launcher.min_replicas={value!r} must be an integer from 1 to mesh.replicas={replicas}, "
                         "or null (restart on every replica or not at all)")
    return value


def resolve_use_gpu(wanted: object, backend: str, joins_cluster: bool, cluster_gpus: float) -> bool:
    """Whether ranks take a GPU each, from the request: ``launcher.use_gpu`` true/false as
    given; ``auto`` is true when ``comm.backend=nccl`` asks for GPUs or the cluster has some
    now. A joined cluster without GPUs now may be an autoscaling one with none booted yet:
    ``auto`` there is an error asking the user to choose, never a silent fall back to CPUs."""
    if wanted != "auto":
        return bool(wanted)
    if backend == "nccl" or cluster_gpus > 0:
        return True
    if joins_cluster:
        raise ValueError("launcher.use_gpu=auto: the cluster has no GPU now (an autoscaling cluster boots GPU "
                         "nodes only when a job asks for them); set launcher.use_gpu=true to ask for GPU ranks, or "
                         "launcher.use_gpu=false to train on CPU ranks with gloo")
    return False


def describe_resources(resources: Mapping[str, float]) -> str:
    keys = sorted(k for k in resources if k in ("CPU", "GPU") or not k.startswith(("node:", "memory",
                                                                                      "object_store")))
    return ", ".join(f"{k}={resources[k]:g}" for k in keys) or "nothing"
