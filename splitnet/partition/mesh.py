"""The device mesh: replicas x model-parallel devices, and where each rank sits in it.

Rank layout: global rank = replica * devices + device. The model-parallel ranks of one
replica are consecutive, so a launcher that fills nodes in rank order keeps every
model-parallel group on one node, where the links are fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from splitnet.errors import SplitnetError

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


class MeshError(SplitnetError, ValueError):
    pass


def parse_bytes(value: Any) -> int | None:
    """'3GiB' -> 3221225472, '1.5GB' -> 1500000000, 1024 -> 1024, None -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise MeshError(f"mesh.device_memory={value!r}: expected bytes or a size like '3GiB'")
    if isinstance(value, (int, float)):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise MeshError(f"mesh.device_memory={value!r}: expected bytes or a size like '3GiB', '512MiB'")
    unit = (match.group(2) or "").upper().removesuffix("B")
    return int(float(match.group(1)) * _UNITS[unit])


def replicas_for_world(world: int, devices: Any, replicas: Any = None, *, started_by: str = "the launcher") -> int:
    """``mesh.replicas`` for a world of ``world`` ranks: the given value, checked, or when it is
    null the world divided by ``mesh.devices``; a world the mesh does not fit is one line."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise MeshError(f"mesh.devices={devices!r} must be an integer >= 1")
    if replicas is None:
        if world < devices or world % devices:
            raise MeshError(f"{started_by} started {world} rank(s), which mesh.devices={devices} does not "
                            f"divide: mesh.replicas=null needs a world of replicas x {devices} ranks; start a "
                            f"multiple of {devices} ranks or change mesh.devices")
        return world // devices
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise MeshError(f"mesh.replicas={replicas!r} must be an integer >= 1, or null to derive it from the "
                        "world size")
    if replicas * devices != world:
        raise MeshError(f"{started_by} started {world} rank(s) but mesh.replicas x mesh.devices = {replicas} x "
                        f"{devices} = {replicas * devices}; start {replicas * devices} ranks or set "
                        "mesh.replicas=null to derive it")
    return replicas


@dataclass(frozen=True)
class Mesh:
    devices: int = 1
    replicas: int = 1
    device_memory: int | None = None
    link_gbps: float = 64.0
    device_tflops: float = 1.5

    def __post_init__(self) -> None:
        for key in ("devices", "replicas"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MeshError(f"mesh.{key}={value!r} must be an integer >= 1")
        for key in ("link_gbps", "device_tflops"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise MeshError(f"mesh.{key}={value!r} must be > 0")
        if self.device_memory is not None and not (isinstance(self.device_memory, int)
                                                   and self.device_memory > 0):
            raise MeshError(f"mesh.device_memory={self.device_memory!r} must be > 0")

    @property
    def world_size(self) -> int:
        return self.devices * self.replicas

    def coords(self, rank: int) -> tuple[int, int]:
        """Global rank -> (replica, model-parallel device)."""
        if not 0 <= rank < self.world_size:
            raise MeshError(f"rank {rank} outside a mesh of {self.world_size} ranks")
        return divmod(rank, self.devices)

    def rank(self, replica: int, device: int) -> int:
        return replica * self.devices + device

    def model_group(self, replica: int) -> list[int]:
        """The global ranks of one replica's model-parallel group."""
        return [self.rank(replica, d) for d in range(self.devices)]

    def replica_group(self, device: int) -> list[int]:
        """The global ranks that hold the same slice in every replica (data-parallel group)."""
        return [self.rank(r, device) for r in range(self.replicas)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Mesh:
        known = {"devices", "replicas", "device_memory", "link_gbps", "device_tflops"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MeshError(f"mesh: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        args = dict(d)
        if args.get("replicas", 1) is None:  # null: derived from the world size where a launcher has one
            args["replicas"] = 1
        if "device_memory" in args:
            args["device_memory"] = parse_bytes(args["device_memory"])
        return cls(**args)
