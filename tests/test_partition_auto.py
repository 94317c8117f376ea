from __future__ import annotations

import pytest
import yaml

from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, PartitionError, make_plan
from tests.conftest import CONF

GTX580 = 3 * 2**30   # 3 GiB


def auto(spec, batch=128, **mesh):
    return make_plan(spec, {"strategy": "auto", "exchange": "auto", "microbatches": 4}, Mesh(**mesh), batch)


def test_candidates_and_the_estimate_formula(alexnet):
    mesh = {"devices": 2, "device_memory": GTX580, "link_gbps": 64.0, "device_tflops": 1.5}
    plan = auto(alexnet, **mesh)
    rows = plan.candidates
    assert [(r["strategy"], r["options"]) for r in rows] == [
        ("columns", {"exchange": "auto"}), ("columns", {"exchange": "gather"}),
        ("hybrid", {"exchange": "auto"}),
        ("pipeline", {"balance": "flops", "microbatches": 4}),
        ("pipeline", {"balance": "params", "microbatches": 4})]
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["strategy"] == plan.strategy
    # step = largest FLOPs / throughput + largest bytes in * 8 / bandwidth (no overlap)
    compute = max(c.flops for c in plan.costs) / 1.5e12
    comm = max(c.bytes_in for c in plan.costs) * 8 / 64e9
    assert chosen[0]["step_s"] == pytest.approx(compute + comm)
    assert chosen[0]["memory_bytes"] == max(c.memory_bytes for c in plan.costs) <= GTX580
    assert chosen[0]["step_s"] == min(r["step_s"] for r in rows if r["fits"])
    assert plan.rationale.startswith(f"auto chose {plan.strategy} ")


def test_pipeline_estimate_pays_the_bubble(alexnet):
    plan = auto(alexnet, devices=2)
    row = next(r for r in plan.candidates if r["options"] == {"balance": "flops", "microbatches": 4})
    pipe = make_plan(alexnet, {"strategy": "pipeline", "balance": "flops", "microbatches": 4}, Mesh(devices=2), 128)
    # GPipe: M micro-batches over D stages take (M+D-1)/M of the slowest stage's time
    assert row["compute_s"] == pytest.approx(max(c.flops for c in pipe.costs) / 1.5e12 * (4 + 2 - 1) / 4)


def test_a_3gib_cap_rules_out_the_fastest_candidate(alexnet):
    # On a slow link the params-balanced pipeline, which sends one small activation, is the
    # fastest; at batch 256 its first stage (conv1..fc6) needs more than a GTX 580's 3 GiB.
    free = auto(alexnet, batch=256, devices=2, link_gbps=0.1)
    capped = auto(alexnet, batch=256, devices=2, link_gbps=0.1, device_memory=GTX580)
    assert (free.strategy, free.candidates[4]["chosen"]) == ("pipeline", True)
    assert free.candidates[4]["memory_bytes"] > GTX580
    assert capped.strategy == "hybrid"
    fits = {(r["strategy"], tuple(r["options"].values())): r["fits"] for r in capped.candidates}
    assert fits[("pipeline", ("params", 4))] is False
    assert max(c.memory_bytes for c in capped.costs) <= GTX580
    best = min((r for r in capped.candidates if r["fits"]), key=lambda r: r["step_s"])
    assert best["chosen"] and best["strategy"] == "hybrid"


def test_nothing_fits_says_by_how_much(alexnet):
    cap = 100 * 2**20
    with pytest.raises(PartitionError) as err:
        auto(alexnet, devices=2, device_memory=cap)
    smallest = min(
        max(c.memory_bytes for c in make_plan(alexnet, {"strategy": s, **o}, Mesh(devices=2), 128).costs)
        for s, o in [("columns", {"exchange": "auto"}), ("columns", {"exchange": "gather"}),
                     ("hybrid", {"exchange": "auto"}), ("pipeline", {"balance": "flops", "microbatches": 4}),
                     ("pipeline", {"balance": "params", "microbatches": 4})])
    message = str(err.value)
    assert message.startswith(f"auto: nothing fits mesh.device_memory={cap:,} bytes; the smallest candidate (")
    assert f"needs {smallest:,} bytes per device, {smallest - cap:,} bytes (" in message
    assert message.endswith("too many")


def test_no_candidate_can_split_the_model():
    # 3 devices: fc8 has 2 outputs, so columns and hybrid cannot shard it; pipelines can
    raw = yaml.safe_load((CONF / "model" / "alexnet_small.yaml").read_text())
    raw["layers"][-1]["out"] = 2
    plan = auto(load_spec(raw), devices=3)
    errors = [r for r in plan.candidates if "error" in r]
    assert [r["strategy"] for r in errors] == ["columns", "columns", "hybrid"]
    assert plan.strategy == "pipeline"


def test_auto_past_the_pipeline_limit_picks_a_plan_where_every_rank_holds_parameters(alexnet_small):
    plan = auto(alexnet_small, devices=9)
    assert [r["strategy"] for r in plan.candidates if "error" in r] == ["pipeline", "pipeline"]
    assert plan.strategy in ("columns", "hybrid")
    assert all(c.param_count > 0 for c in plan.costs)


@pytest.mark.parametrize("devices", [11, 20])
def test_auto_never_picks_a_rank_without_parameters(alexnet_small, devices):
    # alexnet_small has 8 layers with weights and fc8 is 10 wide: past 8 devices a pipeline
    # leaves a stage without weights, and columns past 10 a device without channels
    with pytest.raises(PartitionError, match=rf"auto: no strategy can split this model: .*pipeline: "
                                             rf"mesh.devices={devices} stages but alexnet_small has only 8 "
                                             r"layers with weights"):
        auto(alexnet_small, devices=devices)


def test_no_strategy_at_all(alexnet_small):
    with pytest.raises(PartitionError, match=r"auto: no strategy can split this model: columns: layer 'fc8'"
                                             r".*pipeline: mesh.devices=24 stages but alexnet_small has only 8 "
                                             r"layers with weights"):
        auto(alexnet_small, devices=24)


def test_a_fixed_strategy_that_does_not_fit_names_every_rank_and_the_smallest_mesh_that_fits(alexnet):
    cap = 900 * 2**20
    free = {d: make_plan(alexnet, {"strategy": "columns"}, Mesh(devices=d), 128) for d in (2, 3, 4)}
    assert min(max(c.memory_bytes for c in free[d].costs) for d in (2, 3)) > cap
    assert cap >= max(c.memory_bytes for c in free[4].costs)
    with pytest.raises(PartitionError) as err:
        make_plan(alexnet, {"strategy": "columns"}, Mesh(devices=2, device_memory=cap), 128)
    message = str(err.value)
    per_rank = ", ".join(f"rank {c.rank} {c.memory_bytes / 2**20:,.0f} MiB" for c in free[2].costs)
    assert message.startswith(f"columns: the predicted peak per device ({per_rank}) exceeds "
                              f"mesh.device_memory={cap:,} bytes (900 MiB); the smallest mesh that fits is "
                              f"mesh.devices=4 ({max(c.memory_bytes for c in free[4].costs) / 2**20:,.0f} MiB")
    assert message.endswith("or use a smaller batch_size or partition=auto")


def test_auto_honours_a_forced_exchange_mode(alexnet):
    from splitnet.partition import Mesh, make_plan

    plan = make_plan(alexnet, {"strategy": "auto", "exchange": "gather"}, Mesh(2), 128)
    assert {c["options"].get("exchange") for c in plan.candidates if c["strategy"] != "pipeline"} == {"gather"}
