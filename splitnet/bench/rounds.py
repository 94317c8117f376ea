"""Rounds of contenders and their summary: medians, ranges, and ratios taken within a round.

A shared machine's speed drifts by more than the differences being measured, so
contenders alternate (A B C A B C ...) and each ratio compares two contenders measured
minutes apart in the same round, never across rounds. Pure: numbers in, numbers out.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# The per-step figures a contender may report beside its rate; medians over rounds.
FIGURES = ("step_s", "cpu_s", "exchange_s", "blocked_s", "unblocked_exchange_s", "bytes_per_step", "decode_s")


def summarise(rounds: Sequence[Mapping[str, Mapping[str, Any]]], baseline: str,
              rate: str = "images_per_s") -> list[dict[str, Any]]:
    """One row per contender (in first-seen order) from ``rounds`` (each: name -> measured figures).

    ``ratio`` is the median over rounds of rate / the baseline's rate in the same round.
    A figure a contender did not report (None) stays None.
    """
    names: list[str] = []
    for measured in rounds:
        names.extend(n for n in measured if n not in names)
    rows = []
    for name in names:
        seen = [m for m in rounds if name in m]
        rates = [m[name][rate] for m in seen]
        ratios = [m[name][rate] / m[baseline][rate] for m in seen if baseline in m]
        row: dict[str, Any] = {"name": name, rate: statistics.median(rates), f"{rate}_min": min(rates),
                               f"{rate}_max": max(rates), "rounds": len(rates)}
        row["ratio"] = statistics.median(ratios) if ratios else None
        row["ratio_min"] = min(ratios) if ratios else None
        row["ratio_max"] = max(ratios) if ratios else None
        cpu = [m[name]["images_per_cpu_s"] / m[baseline]["images_per_cpu_s"] for m in seen
               if "images_per_cpu_s" in m[name] and baseline in m]
        if cpu and rate != "images_per_cpu_s":  # a rate per CPU-second already is this figure
            row["images_per_cpu_s"] = statistics.median(m[name]["images_per_cpu_s"] for m in seen)
            row["cpu_ratio"] = statistics.median(cpu)
        for figure in FIGURES:
            values = [m[name][figure] for m in seen if m[name].get(figure) is not None]
            row[figure] = statistics.median(values) if values else None
        extra = {k: v for k, v in seen[-1][name].items() if k not in row and k != rate}
        rows.append(row | extra)
    return rows
