"""``splitnet train``: plan once, prepare the data, start the workers, report.

The parent never trains: it sizes the model's classifier to the data's classes
(``data.num_classes``), checks everything that can be checked before launching
(``preflight``: bad input fails here, in one line, before any process starts), builds
the embedded dataset's cache once (so N workers do not race to), writes the plan
(JSON, table, picture) into the run folder, hands ``train_worker`` to the launcher it
is given (the command chose it; train imports no launcher), and draws the curves when
the workers are done. Under torchrun every rank is its own parent: each plans (the
same plan), rank 0 writes the plan files, and only the reporting rank prints and draws.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from splitnet.model.spec import with_classes
from splitnet.partition import Mesh
from splitnet.train.preflight import preflight


class Launcher(Protocol):
    """What training needs of a launcher (the command picks one with ``choose_launcher``)."""

    def prepare(self, cfg: dict[str, Any]) -> dict[str, Any]: ...

    def own_ranks(self, world_size: int) -> list[int]: ...

    def launch(self, job: Callable[[int, int, dict[str, Any]], Any], world_size: int, cfg: dict[str, Any], *,
               restart: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               explain: Callable[[int], str] | None = None) -> list[Any]: ...


def run_train(cfg: dict[str, Any], run_dir: Path, launcher: Launcher) -> dict[str, Any]:
    from splitnet.tables import plan_table
    from splitnet.train.curves import draw_curves
    from splitnet.train.loop import log_tail, train_worker
    from splitnet.train.restart import resumed

    cfg = launcher.prepare(cfg)
    written = cfg["model"]
    cfg = {**cfg, "model": with_classes(written, cfg["data"].get("num_classes"))}
    checked = preflight(cfg, run_dir)
    spec, plan, info = checked.spec, checked.plan, checked.info
    run_dir.mkdir(parents=True, exist_ok=True)
    here = launcher.own_ranks(plan.devices * plan.replicas)
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
        if cfg["model"] != written:
            print(f"splitnet train: layer {spec.layers[-1].name!r} has {spec.num_classes} outputs, one per class "
                  f"(data.num_classes; the model file says {written['layers'][-1].get('out')})", file=sys.stderr)
    job_cfg = {**cfg, "plan": plan.to_dict(), "run_dir": str(run_dir)}

    def explain(rank: int) -> str:
        print(file=sys.stderr)  # end the progress bar's line the failed job left open
        return log_tail(run_dir, rank)

    results = launcher.launch(train_worker, plan.devices * plan.replicas, job_cfg, restart=resumed, explain=explain)
    final = next((r["final"] for r in results if r["reporter"]), None)
    if reporting and (run_dir / "metrics.jsonl").exists():
        draw_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    return {"final": final, "results": results, "run_dir": str(run_dir), "plan": plan}
