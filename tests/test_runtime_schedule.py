"""The GPipe schedule as a pure function: ``clock_cycles(m, n)``, the forward fill.

That a pipeline's accumulated micro-batch gradients equal the full-batch gradient is
tested by running it (test_runtime_equivalence.py, pipeline cases with 1 and 4 micro-batches).
"""

from __future__ import annotations

import pytest

from splitnet.partition import Mesh, make_plan
from splitnet.runtime.schedule import clock_cycles
from tests.conftest import shipped_spec


def test_fill_pattern_of_four_microbatches_over_three_stages():
    assert clock_cycles(4, 3) == [
        [(0, 0)],
        [(1, 0), (0, 1)],
        [(2, 0), (1, 1), (0, 2)],
        [(3, 0), (2, 1), (1, 2)],
        [(3, 1), (2, 2)],
        [(3, 2)],
    ]


def test_degenerate_schedules():
    assert clock_cycles(1, 1) == [[(0, 0)]]
    assert clock_cycles(3, 1) == [[(0, 0)], [(1, 0)], [(2, 0)]]
    assert clock_cycles(1, 3) == [[(0, 0)], [(0, 1)], [(0, 2)]]


@pytest.mark.parametrize(("m", "n"), [(1, 2), (2, 2), (4, 2), (4, 3), (8, 4), (3, 5)])
def test_every_stage_runs_every_microbatch_once_in_order_after_its_predecessor(m, n):
    cycles = clock_cycles(m, n)
    assert len(cycles) == m + n - 1
    tick = {}
    for t, work in enumerate(cycles):
        stages = [s for _, s in work]
        assert len(stages) == len(set(stages)), "a stage runs two micro-batches in one tick"
        for pair in work:
            assert pair not in tick
            tick[pair] = t
    assert set(tick) == {(i, s) for i in range(m) for s in range(n)}
    for i in range(m):
        for s in range(n):
            assert tick[(i, s)] == i + s  # a stage starts a micro-batch the tick after the stage before it
    busy = sum(len(work) for work in cycles)
    assert n * len(cycles) - busy == n * (n - 1)  # the bubble: (n-1)/(m+n-1) of the stage-ticks


def test_plan_quotes_the_same_bubble():
    m, n = 4, 3
    plan = make_plan(shipped_spec("alexnet_small"), {"strategy": "pipeline", "microbatches": m}, Mesh(n), 8)
    idle = 1 - sum(len(work) for work in clock_cycles(m, n)) / (n * (m + n - 1))
    assert f"idle fraction (D-1)/(M+D-1) = {idle:.0%}" in plan.rationale
