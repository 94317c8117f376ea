"""Where a rank's step time went: computing, inside exchanges, and waiting for peers.

Each rank's transport times every blocking wait of the step (see comm/transport.py):
when the rank issued the operation, when it began to wait, when the wait ended, and a
key its peers compute alike. A wait that begins before the last peer has issued the
same operation spends that gap waiting for the peer, not moving bytes. Ranks of one
machine share its monotonic clock, so their times compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def time_split(clocks: Sequence[Sequence[dict[str, Any]]], step_s: Sequence[float]) -> list[dict[str, float]]:
    """``clocks[r]``: global rank r's timed waits of one step, ``step_s[r]`` its step time.

    Per rank: ``exchange_s`` (blocked inside exchanges), ``wait_s`` (the part of that
    spent before the last peer arrived) and ``compute_s`` (the rest of the step)."""
    arrived: dict[tuple[Any, ...], int] = {}
    for records in clocks:
        for rec in records:
            key = tuple(rec["key"])
            arrived[key] = max(arrived.get(key, rec["issued"]), rec["issued"])
    out = []
    for records, seconds in zip(clocks, step_s, strict=True):
        inside = waiting = 0
        for rec in records:
            blocked = rec["left"] - rec["entered"]
            inside += blocked
            waiting += min(max(arrived[tuple(rec["key"])] - rec["entered"], 0), blocked)
        out.append({"step_s": seconds, "exchange_s": inside / 1e9, "wait_s": waiting / 1e9,
                    "compute_s": max(seconds - inside / 1e9, 0.0)})
    return out
