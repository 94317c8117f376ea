"""The meter: every transfer this rank takes part in, per layer and direction.

Bytes are what this rank *receives*, under the same ring accounting as the plan's
cost model (see splitnet/partition/plan.py), kept as exact fractions so a measured
step can be compared with the plan to the byte. Always on: one dict update per call.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction
from typing import Any

from splitnet.partition.plan import ring_bytes


class Meter:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.bytes: dict[tuple[str, str], Fraction] = defaultdict(Fraction)

    def record(self, layer: str, direction: str, collective: str, nbytes: int, k: int) -> None:
        """One call of ``collective`` on an ``nbytes`` tensor (the whole one) over ``k`` ranks."""
        key = (layer, direction)
        self.calls[key] += 1
        self.bytes[key] += ring_bytes(collective, nbytes, k)

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def per_layer(self) -> dict[str, dict[str, Any]]:
        """{layer: {"fwd": Fraction, "bwd": Fraction, "calls": int}} for every layer that talked."""
        out: dict[str, dict[str, Any]] = {}
        for (layer, direction), b in self.bytes.items():
            row = out.setdefault(layer, {"fwd": Fraction(0), "bwd": Fraction(0), "calls": 0})
            row[direction] += b
            row["calls"] += self.calls[(layer, direction)]
        return out

    def total(self) -> Fraction:
        return sum(self.bytes.values(), Fraction(0))
