"""``splitnet train``: plan once, prepare the data, start the workers, report.

The parent never trains: it checks everything that can be checked before launching
(``preflight``: bad input fails here, in one line, before any process starts), builds
the embedded dataset's cache once (so N workers do not race to), writes
the plan (JSON, table, picture) into the run folder, hands ``train_worker`` to the
launcher, and draws the curves when the workers are done. Under torchrun every rank is
its own parent: each plans (the same plan), rank 0 writes the plan files, and only the
reporting rank prints and draws.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.partition import Mesh
from splitnet.train.preflight import preflight


def launcher_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as the chosen launcher runs it (torchrun derives ``mesh.replicas`` from its
    world size and checks it; the others change nothing)."""
    if cfg["launcher"].get("name") == "torchrun":
        from splitnet.launchers.torchrun import adapt_config

        return adapt_config(cfg)
    return cfg


def own_ranks(cfg: dict[str, Any], world_size: int) -> list[int]:
    """The global ranks whose results this process gets back: all of them, except under
    torchrun, where every rank is its own process and does its own reporting."""
    if cfg["launcher"].get("name") == "torchrun":
        from splitnet.launchers.torchrun import this_rank

        return [this_rank()]
    return list(range(world_size))


def launch_workers(cfg: dict[str, Any], job: Any, world_size: int) -> list[Any]:
    launcher = cfg["launcher"]
    name = launcher.get("name", "simulate")
    if name == "simulate":
        from splitnet.launchers.simulate import launch

        return launch(job, world_size, cfg, threads=launcher.get("threads"),
                      timeout_s=cfg["comm"]["timeout_s"] + 60)
    if name == "torchrun":
        from splitnet.launchers.torchrun import launch as torchrun_launch

        return torchrun_launch(job, world_size, cfg)
    if name == "ray":
        from splitnet.launchers.ray import launch as ray_launch

        return ray_launch(job, world_size, cfg)
    raise SplitnetError(f"launcher={name!r} is not available; valid: simulate, torchrun, ray")


def run_train(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from splitnet.launchers.simulate import WorkerFailed
    from splitnet.tables import plan_table
    from splitnet.train.curves import draw_curves
    from splitnet.train.loop import log_tail, train_worker

    cfg = launcher_config(cfg)
    checked = preflight(cfg, run_dir)
    spec, plan, info = checked.spec, checked.plan, checked.info
    run_dir.mkdir(parents=True, exist_ok=True)
    here = own_ranks(cfg, plan.devices * plan.replicas)
    if 0 in here:
        (run_dir / "plan.json").write_text(plan.to_json())
        (run_dir / "plan.txt").write_text(plan_table(plan) + "\n")
        try:
            from splitnet.partition.picture import draw_plan

            draw_plan(spec, plan, run_dir / "plan.png")
        except ImportError:
            pass
    reporting = Mesh(plan.devices, plan.replicas).rank(0, plan.output_rank) in here
    if reporting:
        print(f"splitnet train: {spec.name} ({spec.total_params:,} parameters), {plan.rationale}",
              file=sys.stderr)
        print(f"splitnet train: data {info.name} ({info.num_classes} classes), run folder {run_dir}",
              file=sys.stderr)
    job_cfg = {**cfg, "plan": plan.to_dict(), "run_dir": str(run_dir)}
    try:
        results = launch_workers(job_cfg, train_worker, plan.devices * plan.replicas)
    except WorkerFailed as failed:
        print(file=sys.stderr)  # end the progress bar's line the failed job left open
        raise failed.with_context(log_tail(run_dir, failed.rank)) from None
    final = next((r["final"] for r in results if r["reporter"]), None)
    if reporting and (run_dir / "metrics.jsonl").exists():
        draw_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    return {"final": final, "results": results, "run_dir": str(run_dir), "plan": plan}
