"""``splitnet train``: plan once, prepare the data, start the workers, report.

The parent never trains: it checks everything that can be checked before launching
(``preflight``: bad input fails here, in one line, before any process starts), builds
the embedded dataset's cache once (so N workers do not race to), writes
the plan (JSON, table, picture) into the run folder, hands ``train_worker`` to the
launcher, and draws the curves when the workers are done.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.train.preflight import preflight


def launch_workers(cfg: dict[str, Any], job: Any, world_size: int) -> list[Any]:
    launcher = cfg["launcher"]
    name = launcher.get("name", "simulate")
    if name == "simulate":
        from splitnet.launchers.simulate import launch

        return launch(job, world_size, cfg, threads=launcher.get("threads"),
                      timeout_s=cfg["comm"]["timeout_s"] + 60)
    raise SplitnetError(f"launcher={name!r} is not available here; valid: simulate")


def run_train(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from splitnet.launchers.simulate import WorkerFailed
    from splitnet.report import plan_table
    from splitnet.train.curves import draw_curves
    from splitnet.train.loop import log_tail, train_worker

    checked = preflight(cfg, run_dir)
    spec, plan, info = checked.spec, checked.plan, checked.info
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(plan.to_json())
    (run_dir / "plan.txt").write_text(plan_table(plan) + "\n")
    try:
        from splitnet.partition.picture import draw_plan

        draw_plan(spec, plan, run_dir / "plan.png")
    except ImportError:
        pass
    print(f"splitnet train: {spec.name} ({spec.total_params:,} parameters), {plan.rationale}", file=sys.stderr)
    print(f"splitnet train: data {info.name} ({info.num_classes} classes), run folder {run_dir}", file=sys.stderr)
    job_cfg = {**cfg, "plan": plan.to_dict(), "run_dir": str(run_dir)}
    try:
        results = launch_workers(job_cfg, train_worker, plan.devices * plan.replicas)
    except WorkerFailed as failed:
        print(file=sys.stderr)  # end the progress bar's line the failed job left open
        raise failed.with_context(log_tail(run_dir, failed.rank)) from None
    final = next(r["final"] for r in results if r["reporter"])
    if (run_dir / "metrics.jsonl").exists():
        draw_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    return {"final": final, "results": results, "run_dir": str(run_dir), "plan": plan}
