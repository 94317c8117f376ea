"""Peak live tensor bytes from an allocation trace, and which tensors held them.

Pure bookkeeping, no torch. The input is the allocator's own trace: every allocation
and free in order, each allocation tagged with where it was made (inside an exchange,
while drawing the input batch, during backward, during the step's forward...), plus
"marks": instants at which the addresses of the parameters, the gradients and the
optimizer state were read off the live tensors. An allocation that was alive at a mark
under one of those addresses is that kind of tensor for its whole life; every other
allocation takes its category from its tag. The account promises: ``peak`` is the
largest running total of live bytes (what the allocator itself reports as allocated),
``at_peak`` splits that instant by category and sums to it exactly, and ``largest``
is the most each category ever held at once.

One blind spot, shared with the allocator: a free made on a thread the trace does not
follow (gloo's worker thread dropping the last reference to an exchange buffer after the
step has moved on) is neither traced nor subtracted from the allocator's own count, which
keeps those bytes until the process ends. The account keeps them too, so its peak stays
the allocator's; but the address may be handed out again, and the newer allocation there
is the one a mark names (the older one keeps its own category).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "backward", "exchange", "input",
              "other")

# Where an allocation was made -> what it holds, unless its address says otherwise.
_BY_TAG = {"exchange": "exchange", "input": "input", "backward": "backward", "forward": "activations"}


@dataclass
class Allocation:
    order: int              # position in the trace
    start_ns: int
    ptr: int
    size: int
    tag: str
    end_order: int | None = None
    end_ns: int | None = None
    replaced_ns: int | None = None  # when a newer allocation took this address (its free untraced)
    category: str = "other"

    def alive_at(self, ns: int) -> bool:
        return self.start_ns <= ns and (self.end_ns is None or ns < self.end_ns)

    def holds_address_at(self, ns: int) -> bool:
        """Whether this allocation is the one at its address at ``ns``."""
        return self.alive_at(ns) and (self.replaced_ns is None or ns < self.replaced_ns)


@dataclass
class Account:
    peak: int = 0
    at_peak: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    largest: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))


def allocations(trace: Iterable[tuple[int, int, int, str]]) -> list[Allocation]:
    """``trace``: (time_ns, ptr, bytes, tag) in allocator order; a free has negative bytes.

    A free of an address this trace never saw allocated (made before tracing began) is
    ignored, as the allocator's own count ignores it. An allocation at an address still
    live here was freed outside the trace: it stays live, as in the allocator's count, and
    is marked replaced from then on."""
    live: dict[int, Allocation] = {}
    out: list[Allocation] = []
    for order, (ns, ptr, size, tag) in enumerate(trace):
        if size > 0:
            if ptr in live:
                live[ptr].replaced_ns = ns
            live[ptr] = Allocation(order, ns, ptr, size, tag)
            out.append(live[ptr])
        elif size < 0 and ptr in live:
            done = live.pop(ptr)
            done.end_order, done.end_ns = order, ns
    return out


def categorize(allocs: Sequence[Allocation], marks: Sequence[tuple[int, Mapping[str, set[int]]]]) -> None:
    """Give every allocation its category; ``marks``: (time_ns, {category: addresses})."""
    for a in allocs:
        a.category = _BY_TAG.get(a.tag, "other")
        for ns, held in marks:
            if not a.holds_address_at(ns):
                continue
            named = next((name for name, ptrs in held.items() if a.ptr in ptrs), None)
            if named is not None:
                a.category = named
                break


def account(allocs: Sequence[Allocation]) -> Account:
    """Walk the trace in order, keeping the running total per category."""
    steps: list[tuple[int, int, str]] = []
    for a in allocs:
        steps.append((a.order, a.size, a.category))
        if a.end_order is not None:
            steps.append((a.end_order, -a.size, a.category))
    steps.sort()
    result = Account()
    live = dict.fromkeys(CATEGORIES, 0)
    total = 0
    for _, size, category in steps:
        live[category] += size
        total += size
        if size > 0 and live[category] > result.largest[category]:
            result.largest[category] = live[category]
        if total > result.peak:
            result.peak, result.at_peak = total, dict(live)
    return result
