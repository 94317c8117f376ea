"""The pipeline schedules as pure functions, played out, and run in one process.

``clock_cycles(m, n)`` is GPipe's forward fill; ``gpipe_actions`` and ``one_f_one_b`` list
each stage's forwards and backwards. A small simulation plays the actions as the runtime
does (asynchronous sends, blocking receives, a send waited on only once its peer has
provably taken it) and checks that it always finishes and keeps every dependency.
A one-stage pipeline runs in this process against the reference; that the split
pipelines equal the reference over 2 and 3 processes is tested in
test_runtime_equivalence.py (gpipe and 1f1b cases).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from splitnet.model.layers import set_step
from splitnet.model.reference import build_reference
from splitnet.partition import Mesh, PartitionError, Plan, make_plan
from splitnet.partition.memory import in_flight
from splitnet.runtime import build_shard
from splitnet.runtime.schedule import ORDERS, clock_cycles, gpipe_actions, one_f_one_b, pipeline_step, released_by
from splitnet.verify import verify_batch
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


def test_one_f_one_b_of_four_microbatches_over_three_stages():
    F_, B_ = "F", "B"
    assert one_f_one_b(4, 3) == [
        [(F_, 0), (F_, 1), (F_, 2), (B_, 0), (F_, 3), (B_, 1), (B_, 2), (B_, 3)],
        [(F_, 0), (F_, 1), (B_, 0), (F_, 2), (B_, 1), (F_, 3), (B_, 2), (B_, 3)],
        [(F_, 0), (B_, 0), (F_, 1), (B_, 1), (F_, 2), (B_, 2), (F_, 3), (B_, 3)],
    ]
    assert gpipe_actions(2, 2) == [[(F_, 0), (F_, 1), (B_, 1), (B_, 0)]] * 2
    # fewer micro-batches than the warm-up wants: every forward, then the backwards in order
    assert one_f_one_b(2, 4)[0] == [(F_, 0), (F_, 1), (B_, 0), (B_, 1)]


def test_a_stage_waits_on_a_gradient_send_once_the_stage_before_has_sent_its_next_activation():
    assert released_by(one_f_one_b(4, 2), 1) == {2: [0], 3: [1]}
    assert released_by(one_f_one_b(4, 2), 0) == {}
    assert released_by(gpipe_actions(4, 2), 1) == {}  # GPipe sends no forward after a backward


def _play(actions: list[list[tuple[str, int]]]) -> list[tuple[int, str, int]]:
    """Run every stage's actions as the runtime does; returns (stage, kind, m) in the order
    they completed. A forward on stage s > 0 blocks on the activation from s - 1, a backward
    on s < D - 1 on the gradient from s + 1; sends never block. Fails on a deadlock."""
    n = len(actions)
    pos, done, order = [0] * n, set(), []
    while any(pos[s] < len(actions[s]) for s in range(n)):
        moved = False
        for s in range(n):
            if pos[s] == len(actions[s]):
                continue
            kind, m = actions[s][pos[s]]
            needs = (s - 1, "F", m) if kind == "F" else (s + 1, "B", m)
            if 0 <= needs[0] < n and needs not in done:
                continue
            if kind == "F":
                # the gradient sends this receive lets the stage wait on: the stage before took them
                assert all((s - 1, "B", g) in done for g in released_by(actions, s).get(m, ()))
            done.add((s, kind, m))
            order.append((s, kind, m))
            pos[s] += 1
            moved = True
        assert moved, f"deadlock: stages stuck at {[actions[s][pos[s]] for s in range(n) if pos[s] < len(actions[s])]}"
    return order


@pytest.mark.parametrize("schedule", sorted(ORDERS))
@pytest.mark.parametrize(("m", "n"), [(1, 1), (4, 1), (1, 2), (4, 2), (2, 3), (4, 3), (8, 4), (3, 5)])
def test_schedule_finishes_keeps_every_dependency_and_holds_what_the_cost_model_says(schedule, m, n):
    actions = ORDERS[schedule](m, n)
    order = _play(actions)
    when = {event: t for t, event in enumerate(order)}
    for s in range(n):
        assert sorted(actions[s]) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
        held = most = 0
        for kind, _ in actions[s]:
            held += 1 if kind == "F" else -1
            most = max(most, held)
        assert most == in_flight(schedule, m, n, s)  # memory.py's count of micro-batches held
        for i in range(m):
            assert when[(s, "F", i)] < when[(s, "B", i)]
            if s > 0:
                assert when[(s - 1, "F", i)] < when[(s, "F", i)]
            if s < n - 1:
                assert when[(s + 1, "B", i)] < when[(s, "B", i)]
    if schedule == "1f1b":
        assert [in_flight(schedule, m, n, s) for s in range(n)] == [min(m, n - s) for s in range(n)]


def _plan(schedule: str, devices: int = 2, microbatches: int = 4) -> Plan:
    return make_plan(shipped_spec("alexnet_small"),
                     {"strategy": "pipeline", "microbatches": microbatches, "schedule": schedule},
                     Mesh(devices), 128)


def test_the_plan_records_its_schedule_and_1f1b_holds_less_where_it_holds_fewer_microbatches():
    gpipe, ofob = _plan("gpipe"), _plan("1f1b")
    assert (gpipe.schedule, ofob.schedule) == ("gpipe", "1f1b")
    assert Plan.from_dict(ofob.to_dict()) == ofob
    assert "1F1B schedule" in ofob.rationale and "GPipe schedule" in gpipe.rationale
    assert ofob.exchanges() == gpipe.exchanges()  # the order changes, not the traffic
    # D=2, M=4: stage 0 holds 2 micro-batches instead of 4, stage 1 one instead of 4
    for g, o in zip(gpipe.costs, ofob.costs, strict=True):
        assert o.param_bytes == g.param_bytes and o.activation_bytes < g.activation_bytes
    # D=3, M=2: stage 0 holds min(2, 3) = 2 either way, the same bytes
    assert _plan("1f1b", 3, 2).costs[0] == _plan("gpipe", 3, 2).costs[0]


def test_unknown_schedule_and_a_schedule_without_a_pipeline_are_refused():
    with pytest.raises(PartitionError, match=r"^pipeline: partition.schedule='1f2b'; valid: gpipe, 1f1b$"):
        _plan("1f2b")
    with pytest.raises(PartitionError, match=r"partition.schedule='1f1b' orders a pipeline's micro-batches; "
                                             r"use partition=pipeline"):
        make_plan(shipped_spec("alexnet_small"), {"strategy": "columns", "schedule": "1f1b"}, Mesh(2), 8)


@pytest.mark.parametrize("schedule", sorted(ORDERS))
def test_one_stage_pipeline_equals_the_reference_and_arms_the_gradient_sums_before_the_last_backward(schedule):
    """D=1: the whole schedule runs in this process (no peer to talk to)."""
    spec = shipped_spec("alexnet_small")
    m, batch, step = 4, 8, 3
    plan = make_plan(spec, {"strategy": "pipeline", "microbatches": m, "schedule": schedule}, Mesh(1), batch)
    shard, ref = build_shard(spec, plan, 0).train(), build_reference(spec).train()
    x, y = verify_batch(spec, 0, step, batch)
    set_step(ref, step, 0, batch)
    logits = ref(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    backwards = []
    shard.conv1.weight.register_hook(lambda g: backwards.append(g))
    armed_after = []
    got_loss, got_logits = pipeline_step(shard, x, y, None, step, 0, batch,  # type: ignore[arg-type]
                                         before_last_backward=lambda: armed_after.append(len(backwards)))
    assert len(backwards) == m and armed_after == [m - 1]
    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_logits, logits.detach(), rtol=1e-5, atol=1e-6)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(shard.get_parameter(name).grad, p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.timeout(180)
def test_a_1f1b_stage_holds_what_the_plan_says_and_less_than_under_gpipe(tmp_path, monkeypatch, capsys):
    """The runtime lets each micro-batch's tensors go after its backward, as memory.py assumes."""
    from splitnet.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["model=alexnet_small", "partition=pipeline", "partition.schedule=1f1b", "mesh.devices=2",
            "batch_size=16", "profile.steps=2", "format=json"]
    assert main(["profile", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    gpipe = make_plan(shipped_spec("alexnet_small"), {"strategy": "pipeline", "microbatches": 4}, Mesh(2), 16)
    for r, g in zip(report["ranks"], gpipe.costs, strict=True):
        assert r["planned_peak_bytes"] < g.memory_bytes
        assert r["measured_peak_bytes"] == pytest.approx(r["planned_peak_bytes"], rel=0.03), r["rank"]
    assert report["exchanges_ok"] is True
