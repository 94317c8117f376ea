"""The meter: ring accounting per layer and direction, and one real step's record equal to
the plan's exchange points, to the byte, with every other layer absent."""

from __future__ import annotations

from fractions import Fraction

import pytest

from splitnet.comm import Meter
from splitnet.comm.meter import compare_traffic
from splitnet.launchers.simulate import launch
from splitnet.partition import Mesh, make_plan
from tests.conftest import shipped_spec
from tests.splitting import meter_job, model_dict


def test_ring_accounting_is_exact():
    meter = Meter()
    meter.record("conv3", "fwd", "all_gather", 300, 3)      # receives 2/3 of the whole tensor
    meter.record("conv3", "bwd", "reduce_scatter", 300, 3)
    meter.record("fc8", "fwd", "all_reduce", 100, 4)        # 2 (k-1)/k
    meter.record("fc6", "fwd", "send", 64, 2)               # point to point: all of it
    meter.record("fc6", "fwd", "send", 64, 2)
    assert meter.per_layer() == {
        "conv3": {"fwd": Fraction(200), "bwd": Fraction(200), "calls": 2},
        "fc8": {"fwd": Fraction(150), "bwd": Fraction(0), "calls": 1},
        "fc6": {"fwd": Fraction(128), "bwd": Fraction(0), "calls": 2},
    }
    meter.record("conv1", "bwd", "all_gather", 100, 3)
    assert meter.per_layer()["conv1"]["bwd"] == Fraction(200, 3)  # kept exact, not rounded
    assert meter.total() == Fraction(200 + 200 + 150 + 128) + Fraction(200, 3)
    meter.reset()
    assert meter.per_layer() == {} and meter.total() == 0


def test_the_input_batch_gather_is_data_and_never_a_layers_exchange():
    meter = Meter()
    meter.record("conv3", "fwd", "all_gather", 300, 3)
    meter.record_data("all_gather", 330, 3)  # three ranks' rows of the input batch, 110 bytes each
    assert meter.data_bytes == Fraction(220) and meter.data_calls == 1
    assert meter.per_layer() == {"conv3": {"fwd": Fraction(200), "bwd": Fraction(0), "calls": 1}}
    assert meter.total() == Fraction(200) and set(meter.reading()) == {"conv3"}
    meter.reset()
    assert meter.data_bytes == 0 and meter.data_calls == 0


def _plan(partition, **mesh):
    return make_plan(shipped_spec("alexnet_small"), partition, Mesh(**mesh), 8)


def test_traffic_check_catches_a_silent_layer_that_talked_and_a_short_exchange():
    plan = _plan({"strategy": "columns", "exchange": "gather"}, devices=2)

    def result(rank, extra):
        meter = {name: {"fwd": str(f), "bwd": str(b), "calls": 2} for name, (f, b) in plan.expected(rank).items()}
        meter.update(extra)
        return {"rank": rank, "steps": [{"meter": meter}]}

    rows, ok = compare_traffic(plan, [result(0, {}), result(1, {})])
    assert ok and all(row["ok"] for row in rows)
    assert {row["layer"] for row in rows} == {"conv3", "fc6", "fc7", "fc8", "loss"}

    rows, ok = compare_traffic(plan, [result(0, {"conv1": {"fwd": "4", "bwd": "0", "calls": 1}}), result(1, {})])
    conv1 = next(row for row in rows if row["layer"] == "conv1")
    assert not ok and not conv1["ok"]
    assert (conv1["planned_bytes"], conv1["measured_bytes"]) == (0, 4)
    assert "rank 0 step 0" in conv1["mismatches"][0]

    fwd, bwd = plan.expected(1)["fc6"]
    short = {"fc6": {"fwd": str(fwd - 1), "bwd": str(bwd), "calls": 2}}
    rows, ok = compare_traffic(plan, [result(0, {}), result(1, short)])
    assert not ok and [row["layer"] for row in rows if not row["ok"]] == ["fc6"]


# Every exchange mode that fits 2 ranks; calls per rank and step, by (mode, forward collective).
PLANS = [
    {"strategy": "columns", "exchange": "gather"},
    {"strategy": "columns", "exchange": "reduce"},
    {"strategy": "hybrid", "exchange": "gather"},
    {"strategy": "pipeline", "microbatches": 2},
]
CALLS = {("gather", "all_gather"): 2, ("reduce", "reduce_scatter"): 2, ("reduce", "all_reduce"): 1,
         ("logits", "all_gather"): 1, ("batch", "all_gather"): 2, ("grads", "none"): 1, ("send", "send"): 2}


@pytest.mark.timeout(120)
def test_one_step_meters_exactly_the_plans_exchange_points():
    plans = [_plan(partition, devices=2) for partition in PLANS]
    meters = launch(meter_job, 2, {"model": model_dict("alexnet_small"), "plans": [p.to_dict() for p in plans]})
    modes = set()
    for i, plan in enumerate(plans):
        exchanges = plan.exchanges()
        seen = set()
        for rank in range(2):
            meter = meters[rank][i]
            expected = plan.expected(rank)
            assert set(meter) == set(expected), (plan.strategy, rank, sorted(meter), sorted(expected))
            for name, (fwd, bwd) in expected.items():
                assert (Fraction(meter[name]["fwd"]), Fraction(meter[name]["bwd"])) == (fwd, bwd), name
                ex = exchanges[name]
                assert meter[name]["calls"] == CALLS[(ex.mode, ex.collective)], name
                modes.add(ex.mode)
            seen |= set(meter)
        assert seen == set(exchanges)  # every exchange point talked; no other layer did
        silent = {layer.name for layer in shipped_spec("alexnet_small").layers} - set(exchanges)
        assert silent and not silent & seen
    assert modes == {"gather", "reduce", "logits", "batch", "grads", "send"}
