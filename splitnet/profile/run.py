"""``splitnet profile``: run the ranks, then set what they measured beside the plan.

Per rank: the planned and the measured peak tensor bytes, the measured split by
category at that peak (and the most each category held at once), peak RSS, and the
step time split into compute, time blocked in exchanges, and of that the time waiting
for the last peer (the exchange clock's ``compute_s``, ``blocked_s``, ``peer_wait_s``:
comm/clock.py says what each means). Per exchange point: the meter's bytes beside the
plan's, checked exactly as ``verify`` checks them (``compare_traffic``).
"""

from __future__ import annotations

from typing import Any

from splitnet.comm.clock import time_split
from splitnet.comm.meter import compare_traffic
from splitnet.model.spec import load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.partition.plan import DeviceCost
from splitnet.profile.account import CATEGORIES
from splitnet.tables import table
from splitnet.units import human


def planned_breakdown(cost: DeviceCost) -> dict[str, int]:
    """The cost model's figure for each category it predicts."""
    return {"parameters": cost.param_bytes, "gradients": cost.grad_bytes, "optimizer": cost.optimizer_bytes,
            "activations": cost.activation_bytes}


def run_profile(cfg: dict[str, Any]) -> dict[str, Any]:
    from splitnet.keys import need_int
    from splitnet.launchers import choose_launcher
    from splitnet.profile.worker import profile_worker
    from splitnet.train.preflight import check_comm, check_optim, compute_bytes

    launcher = choose_launcher(cfg)
    cfg = launcher.prepare(cfg)
    spec = load_spec(cfg["model"])
    need_int(cfg["profile"], "profile", "steps", 1)
    check_optim(cfg["optim"])
    check_comm(cfg.get("comm", {}))
    plan = make_plan(spec, cfg["partition"], Mesh.from_dict(cfg["mesh"]), cfg["batch_size"], compute_bytes(cfg))
    results = launcher.launch(profile_worker, plan.devices * plan.replicas, {**cfg, "plan": plan.to_dict()})
    times = time_split([r["waits"] for r in results], [r["step_s"] for r in results])
    exchanges, traffic_ok = compare_traffic(plan, results)
    ranks = []
    for res, spent in zip(results, times, strict=True):
        cost = plan.costs[res["rank"] % plan.devices]
        planned = planned_breakdown(cost)
        ranks.append({
            "rank": res["rank"], "planned_peak_bytes": cost.memory_bytes, "measured_peak_bytes": res["peak_bytes"],
            "allocator_peak_bytes": res["allocator_peak_bytes"], "rss_peak_bytes": res["rss_peak_bytes"],
            "cuda_max_allocated_bytes": res["cuda_max_allocated_bytes"],
            "breakdown": {c: {"planned": planned.get(c), "at_peak": res["at_peak"][c], "largest": res["largest"][c]}
                          for c in CATEGORIES},
            **spent,
        })
    return {"model": spec.name, "strategy": plan.strategy, "mesh": {"devices": plan.devices,
                                                                     "replicas": plan.replicas},
            "batch_size": plan.batch_size, "steps": cfg["profile"]["steps"], "ranks": ranks,
            "exchanges": exchanges, "exchanges_ok": traffic_ok}


def profile_table(report: dict[str, Any]) -> str:
    mesh = report["mesh"]
    head = (f"{report['model']}, {report['strategy']}, {mesh['devices']} device(s) x {mesh['replicas']} "
            f"replica(s), batch {report['batch_size']}, {report['steps']} step(s); measured = peak live "
            "tensor bytes from the allocator's trace")
    rows = [[r["rank"], human(r["planned_peak_bytes"], "B"), human(r["measured_peak_bytes"], "B"),
             f"{r['measured_peak_bytes'] / r['planned_peak_bytes']:.2f}", human(r["rss_peak_bytes"], "B"),
             f"{r['step_s']:.3f}", f"{r['compute_s']:.3f}", f"{r['blocked_s']:.3f}", f"{r['peer_wait_s']:.3f}"]
            for r in report["ranks"]]
    summary = table(["rank", "planned peak", "measured peak", "measured/planned", "peak RSS", "step s",
                     "compute s", "blocked s", "waiting for peer s"], rows, right=range(9))

    def cell(b: dict[str, Any]) -> str:
        measured = human(b["at_peak"], "B")
        return measured if b["planned"] is None else f"{measured} ({human(b['planned'], 'B')})"

    parts = table(["rank", *CATEGORIES], [[r["rank"], *(cell(r["breakdown"][c]) for c in CATEGORIES)]
                                          for r in report["ranks"]], right=range(len(CATEGORIES) + 1))
    traffic = table(["exchange at", "planned bytes", "measured bytes", "calls", "equal"],
                    [[x["layer"], f"{x['planned_bytes']:,}", f"{x['measured_bytes']:,}", x["calls"],
                      "yes" if x["ok"] else "NO"] for x in report["exchanges"]], right=(1, 2, 3))
    return "\n\n".join([head, summary, "at the measured peak, by category (planned in brackets):\n" + parts,
                        "bytes received per step, all ranks (the meter beside the plan):\n" + traffic])
