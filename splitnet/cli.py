"""``splitnet <command> [hydra overrides]``: the command line.

Every command but ``shards`` is a Hydra app over ``conf/config.yaml`` (found by
configs.py); a user's own model files join through Hydra's search path
(``--config-dir DIR model=NAME``). Below the commands, code takes resolved dicts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitnet.configs import CONF_DIR
from splitnet.errors import SplitnetError

USAGE = """usage: splitnet <command> [key=value ...]

commands:
  describe   the model spec as a table: shapes, parameters, FLOPs per layer
  plan       partition the model over a device mesh: placement, exchanges, costs
  verify     run the split model and the single-device reference, prove them equal
  profile    measure each rank's peak tensor memory and step time beside the plan
  train      train a split model (default: alexnet_small on 2 simulated CPU devices)
  evaluate   evaluate a checkpoint
  export     write a checkpoint's merged single-model state_dict
  shards     write webdataset shards from images (see `splitnet shards --help`)
  bench      throughput|bytes|data|all: splitnet against DDP and torch pipelining [out=DIR]
  report     collect a run or sweep folder into a table and plots: report DIR [out=DIR] [format=json]

Configuration is Hydra's: e.g. `splitnet plan model=alexnet partition=hybrid mesh.devices=4`,
`--config-dir DIR model=NAME` for your own model files, `--cfg job` to print the config.
"""


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _describe(cfg: dict[str, Any]) -> int:
    from splitnet.model.spec import load_spec, spec_summary
    from splitnet.tables import spec_table

    spec = load_spec(cfg["model"])
    if cfg.get("format") == "json":
        print(json.dumps(spec_summary(spec)))
    else:
        print(spec_table(spec))
    return 0


def make_plan_from(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The spec and plan a resolved config describes."""
    from splitnet.model.spec import load_spec
    from splitnet.partition import Mesh, make_plan

    spec = load_spec(cfg["model"])
    return spec, make_plan(spec, cfg["partition"], Mesh.from_dict(cfg["mesh"]), cfg["batch_size"],
                           cfg.get("dtype_bytes", 4))


def _plan(cfg: dict[str, Any]) -> int:
    from splitnet.tables import plan_table

    spec, plan = make_plan_from(cfg)
    if cfg.get("out"):
        Path(cfg["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg["out"]).write_text(plan.to_json())
    if cfg.get("picture"):
        from splitnet.partition.picture import draw_plan

        draw_plan(spec, plan, cfg["picture"])
    print(plan.to_json() if cfg.get("format") == "json" else plan_table(plan))
    return 0


def _verify(cfg: dict[str, Any]) -> int:
    from splitnet.tables import verify_table
    from splitnet.verify import run_verify

    report = run_verify(cfg)
    print(json.dumps(report) if cfg.get("format") == "json" else verify_table(report))
    return 0 if report["ok"] else 1


def _profile(cfg: dict[str, Any]) -> int:
    from splitnet.profile import profile_table, run_profile
    from splitnet.profile.picture import draw_profile

    report = run_profile(cfg)
    drawn = draw_profile(report, cfg.get("picture") or "profile.png")
    print(json.dumps(report) if cfg.get("format") == "json" else f"{profile_table(report)}\n\npicture: {drawn}")
    return 0


def _train(cfg: dict[str, Any]) -> int:
    from hydra.core.hydra_config import HydraConfig

    from splitnet.launchers import choose_launcher
    from splitnet.train.job import run_train

    run_dir = Path(cfg["train"].get("run_dir") or HydraConfig.get().runtime.output_dir)
    out = run_train(cfg, run_dir, choose_launcher(cfg))
    if any(r.get("preempted") for r in out["results"]):
        from splitnet.train.loop import PREEMPTED_EXIT

        step = max(r["step"] for r in out["results"])
        print(f"splitnet train: stopped by SIGTERM after step {step} with a complete checkpoint in "
              f"{run_dir / 'checkpoints'}; exit status {PREEMPTED_EXIT}: requeue the same command with "
              "train.resume=auto to continue", file=sys.stderr)
        return PREEMPTED_EXIT
    final = out["final"]
    if final is None:  # a torchrun rank that does not report: the reporting rank prints the result
        return 0
    if "top1" in final:
        top5 = f"top-5 {final['top5']:.2%}, " if "top5" in final else ""
        print(f"final held-out top-1 accuracy: {final['top1']:.2%} ({top5}"
              f"{final['val_samples']} images, epoch {final['epoch'] + 1}, step {final['step']})")
    else:
        print(f"trained without validation (eval.enabled=false): epoch {final['epoch'] + 1}, step {final['step']}")
    print(f"run folder: {out['run_dir']} (metrics.jsonl, curves.png, plan.png, checkpoints/, logs/)")
    return 0


def _export(cfg: dict[str, Any]) -> int:
    from splitnet.train.export import export_checkpoint

    if not cfg.get("ckpt") or not cfg.get("out"):
        raise SplitnetError("export needs ckpt=PATH (a checkpoint or run folder) and out=FILE")
    print(f"wrote {export_checkpoint(cfg['ckpt'], cfg['out'])}")
    return 0


def _evaluate(cfg: dict[str, Any]) -> int:
    from splitnet.train.evaluate import evaluate_checkpoint, scores_text

    if not cfg.get("ckpt"):
        raise SplitnetError("evaluate needs ckpt=PATH (a checkpoint or run folder)")
    result = evaluate_checkpoint(cfg["ckpt"], cfg)
    if cfg.get("format") == "json":
        print(json.dumps(result))
    else:
        print(f"{result['model']} from {result['checkpoint']}: {scores_text(result)}, "
              f"loss {result['val_loss']:.4f} on {result['val_samples']} images")
    return 0


def _bench(suite: str) -> Callable[[dict[str, Any]], int]:
    def job(cfg: dict[str, Any]) -> int:
        from splitnet.bench.suites import run_suites

        run_suites(suite, cfg)
        return 0

    return job


def _report(args: list[str]) -> int:
    """``splitnet report DIR [out=DIR] [format=json]``: not a Hydra app, it reads finished files."""
    from splitnet.report.plots import draw_heatmap, draw_sweep_curves
    from splitnet.report.sweep import collect, markdown, to_json

    paths = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = sorted(set(options) - {"out", "format"})
    if len(paths) != 1 or unknown or options.get("format", "table") not in ("table", "json"):
        print("usage: splitnet report RUN_OR_SWEEP_DIR [out=DIR] [format=table|json]"
              + (f" (unknown option(s) {unknown})" if unknown else ""), file=sys.stderr)
        return 2
    try:
        sweep = collect(paths[0])
        out = Path(options.get("out") or paths[0])
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(sweep)
        (out / "report.md").write_text(text)
        (out / "report.json").write_text(json.dumps(to_json(sweep), indent=1))
        pictures = [draw_sweep_curves(sweep, out / "curves.png"), draw_heatmap(sweep, out / "heatmap.png")]
    except SplitnetError as exc:
        print(f"splitnet report: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(sweep)) if options.get("format") == "json" else text)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, "
          + ", ".join(str(p) for p in pictures if p is not None), file=sys.stderr)
    return 0


def _commands() -> dict[str, Callable[[dict[str, Any]], int]]:
    return {"describe": _describe, "plan": _plan, "verify": _verify, "profile": _profile, "train": _train,
            "export": _export, "evaluate": _evaluate}


def _run_hydra(command: str, job: Callable[[dict[str, Any]], int], args: list[str]) -> int:
    import hydra

    from splitnet.configs import register_resolver

    register_resolver()
    result = {"rc": 1}

    def task(cfg: Any) -> None:
        try:
            result["rc"] = job(_plain(cfg))
        except SplitnetError as exc:
            print(f"splitnet {command}: error: {exc}", file=sys.stderr)
            result["rc"] = 2

    quiet = [] if command == "train" else [
        "hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none",
        "hydra/hydra_logging=none"]
    if command == "train":  # under torchrun every rank is a Hydra app: one agreed run folder
        from splitnet.launchers.torchrun import run_folder_override

        try:
            quiet = run_folder_override(args)
        except SplitnetError as exc:
            print(f"splitnet {command}: error: {exc}", file=sys.stderr)
            return 2
    saved = sys.argv
    sys.argv = [f"splitnet-{command}", *args, *quiet]
    try:
        hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)()
    finally:
        sys.argv = saved
    return result["rc"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command == "report":
        return _report(args)
    if command == "shards":
        from splitnet.data.cli import main as shards_main

        return shards_main(args)
    commands = _commands()
    if command == "bench":
        from splitnet.bench.suites import NAMES

        if not args or args[0] not in NAMES:
            print(f"splitnet bench: name a suite first: {' | '.join(NAMES)} (got {args[:1] or 'nothing'})",
                  file=sys.stderr)
            return 2
        commands[command], args = _bench(args[0]), args[1:]
    if command not in commands:
        print(f"splitnet: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return _run_hydra(command, commands[command], args)
    except KeyboardInterrupt:
        print(f"splitnet {command}: interrupted; every worker was stopped", file=sys.stderr)
        return 130
