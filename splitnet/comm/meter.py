"""The meter: every transfer this rank takes part in, per layer and direction.

Bytes are what this rank *receives*, computed from the size of the tensor handed to
each collective with the plan's own ring accounting (``ring_bytes``, see
splitnet/partition/plan.py), not counted on the wire; kept as exact fractions so a
measured step can be compared with the plan to the byte (``compare_traffic``). Always
on: one dict update per call.

The input batch's all-gather (each rank of a replica decodes its rows, the ranks join them)
is a data transfer, not one of the plan's exchanges: ``record_data`` counts it apart, in
``data_bytes`` and ``data_calls``, and ``per_layer``, ``total`` and ``reading`` never hold
it, so the record of a step still lists exactly the plan's exchange points.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction
from typing import Any

from splitnet.partition.plan import Plan, ring_bytes


class Meter:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.bytes: dict[tuple[str, str], Fraction] = defaultdict(Fraction)
        self.data_calls = 0
        self.data_bytes = Fraction(0)

    def record(self, layer: str, direction: str, collective: str, nbytes: int, k: int) -> None:
        """One call of ``collective`` on an ``nbytes`` tensor (the whole one) over ``k`` ranks."""
        key = (layer, direction)
        self.calls[key] += 1
        self.bytes[key] += ring_bytes(collective, nbytes, k)

    def record_data(self, collective: str, nbytes: int, k: int) -> None:
        """One call of ``collective`` that moves input data (not an exchange of the plan)."""
        self.data_calls += 1
        self.data_bytes += ring_bytes(collective, nbytes, k)

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()
        self.data_calls = 0
        self.data_bytes = Fraction(0)

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

    def reading(self) -> dict[str, dict[str, Any]]:
        """``per_layer`` with the fractions as strings: what a rank hands back to its launcher."""
        return {layer: {"fwd": str(v["fwd"]), "bwd": str(v["bwd"]), "calls": v["calls"]}
                for layer, v in self.per_layer().items()}


def compare_traffic(plan: Plan, results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """Per layer, the plan's bytes beside the meter's (all ranks, per step) and the calls;
    (rows, True when every rank's every step equals the plan exactly).

    ``results``: one per rank, ``{"rank": r, "steps": [{"meter": Meter.reading()}, ...]}``.
    Equal means: each collective was handed tensors of the sizes the plan expects, at the
    layers it expects, converted to bytes received with the planner's own ``ring_bytes``.
    It is not a count of the bytes on the wire (the backend's own algorithm moves those)."""
    ok = True
    planned: dict[str, Fraction] = {}
    measured: dict[str, Fraction] = {}
    calls: dict[str, int] = {}
    mismatches: dict[str, list[str]] = {}
    for res in results:
        mp = res["rank"] % plan.devices
        expected = plan.expected(mp)
        for layer, (fwd, bwd) in expected.items():
            planned[layer] = planned.get(layer, Fraction(0)) + fwd + bwd
        for k, step in enumerate(res["steps"]):
            seen = {layer: (Fraction(v["fwd"]), Fraction(v["bwd"])) for layer, v in step["meter"].items()}
            for layer in set(seen) | set(expected):
                want = expected.get(layer, (Fraction(0), Fraction(0)))
                got = seen.get(layer, (Fraction(0), Fraction(0)))
                if k == 0:
                    measured[layer] = measured.get(layer, Fraction(0)) + sum(got)
                    calls[layer] = calls.get(layer, 0) + step["meter"].get(layer, {}).get("calls", 0)
                if got != want:
                    ok = False
                    mismatches.setdefault(layer, []).append(
                        f"rank {res['rank']} step {k}: planned fwd/bwd {float(want[0]):.0f}/{float(want[1]):.0f}"
                        f", measured {float(got[0]):.0f}/{float(got[1]):.0f}")
    order = [p.name for p in plan.layers]
    names = sorted(set(planned) | set(measured), key=lambda n: order.index(n) if n in order else len(order))
    rows = [{"layer": n, "planned_bytes": round(planned.get(n, 0)), "measured_bytes": round(measured.get(n, 0)),
             "calls": calls.get(n, 0), "ok": n not in mismatches, "mismatches": mismatches.get(n, [])[:4]}
            for n in names]
    return rows, ok
