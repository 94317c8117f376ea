"""A Transport that also clocks its exchanges, for the benchmarks' exchange and wait columns.

``exchange_s``: wall time inside any transport call (copies around the collective,
the collective itself, the wait); ``wait_s``: the part spent blocked in ``wait`` for a
peer or the network. Nested calls (a collective that waits inside) count once. The
plain Transport stays unclocked: training pays nothing for this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from splitnet.comm.transport import Transport


class TimedTransport(Transport):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchange_s = 0.0
        self.wait_s = 0.0
        self._depth = 0

    def reset_clock(self) -> None:
        self.exchange_s = self.wait_s = 0.0

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
            self.wait_s += time.perf_counter() - start


def _clocked_method(name: str) -> Callable[..., Any]:
    def method(self: TimedTransport, *args: Any, **kwargs: Any) -> Any:
        return self._clocked(getattr(super(TimedTransport, self), name), *args, **kwargs)
    method.__name__ = name
    return method


# every transport call an exchange makes: the collectives, their started halves and completion
for _name in ("complete", "start_all_gather", "start_reduce_scatter", "start_swap", "start_recv", "all_reduce",
              "start_all_reduce", "send", "recv"):
    setattr(TimedTransport, _name, _clocked_method(_name))
