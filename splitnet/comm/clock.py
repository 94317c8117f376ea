"""The exchange clock: where one rank's step time goes around its exchanges.

Its fields, in seconds per rank and step; every report that shows them (``splitnet
profile``, the benchmarks) means exactly this:

- ``exchange_s``: wall time inside the transport's calls: copies into and out of the
  buffers, issuing the collectives, and blocking on them (nested calls count once).
- ``blocked_s``: the part of ``exchange_s`` blocked until an issued exchange finished:
  the transfer itself *and* any time waiting for a peer to arrive.
- ``peer_wait_s``: the part of ``blocked_s`` before the last peer had issued the same
  operation: waiting for the slowest rank, not moving bytes. It needs every rank's
  waits (``time_split``); ranks of one machine share its monotonic clock.
- ``compute_s``: the step's time outside ``blocked_s``.

``ClockedTransport`` measures ``exchange_s`` and ``blocked_s``; any Transport with
``waits`` set to a list also keeps every blocking wait's times (when the rank issued the
operation, when it began to wait, when the wait ended, and the keys every rank taking part
computes alike, one per transfer of a batch), from which ``time_split`` tells
``peer_wait_s`` apart. The plain Transport stays unclocked: training pays nothing for this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from splitnet.comm.transport import Transport


class ClockedTransport(Transport):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchange_s = 0.0
        self.blocked_s = 0.0
        self._depth = 0

    def reset_clock(self) -> None:
        self.exchange_s = self.blocked_s = 0.0

    def _clocked(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._depth += 1
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.exchange_s += time.perf_counter() - start

    def wait(self, work: Any, layer: str, what: str) -> None:
        start = time.perf_counter()
        try:
            self._clocked(super().wait, work, layer, what)
        finally:
            self.blocked_s += time.perf_counter() - start


def _clocked_method(name: str) -> Callable[..., Any]:
    def method(self: ClockedTransport, *args: Any, **kwargs: Any) -> Any:
        return self._clocked(getattr(super(ClockedTransport, self), name), *args, **kwargs)
    method.__name__ = name
    return method


# every transport call an exchange makes: the collectives, their started halves and completion
for _name in ("complete", "start_all_gather", "start_reduce_scatter", "start_swap", "start_recv", "all_reduce",
              "start_all_reduce", "send", "recv"):
    setattr(ClockedTransport, _name, _clocked_method(_name))


def time_split(waits: Sequence[Sequence[dict[str, Any]]], step_s: Sequence[float]) -> list[dict[str, float]]:
    """``waits[r]``: global rank r's blocking waits of one step, ``step_s[r]`` its step time.

    Per rank: ``step_s``, ``blocked_s``, ``peer_wait_s`` and ``compute_s`` (see above)."""
    arrived: dict[tuple[Any, ...], int] = {}
    for records in waits:
        for rec in records:
            for key in map(tuple, rec["keys"]):  # a batch of point-to-point transfers: one per transfer
                arrived[key] = max(arrived.get(key, rec["issued"]), rec["issued"])
    out = []
    for records, seconds in zip(waits, step_s, strict=True):
        blocked = waiting = 0
        for rec in records:
            spent = rec["left"] - rec["entered"]
            blocked += spent
            last = max(arrived[tuple(key)] for key in rec["keys"])
            waiting += min(max(last - rec["entered"], 0), spent)
        out.append({"step_s": seconds, "blocked_s": blocked / 1e9, "peer_wait_s": waiting / 1e9,
                    "compute_s": max(seconds - blocked / 1e9, 0.0)})
    return out
