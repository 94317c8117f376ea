"""``splitnet report``: the runs of a sweep collected into one table, with mean and spread.

A run is a folder with ``metrics.jsonl`` (what ``splitnet train`` writes); a sweep is a
folder of runs, such as ``splitnet train -m`` makes. When the sweep folder holds Hydra's
``multirun.yaml``, the runs it will launch are known in advance (the basic sweeper's
cartesian product, expanded the way Hydra expands it), so a sweep that is still running
or partly failed is reported as it stands: finished runs, incomplete runs (running or
stopped) and missing runs (no metrics yet), each named by its overrides.

Per run: the overrides that differ between runs, final and best held-out top-1/top-5,
the train-minus-validation loss gap at the last scored epoch (the training loss is the
mean of that epoch's step losses, dropout and augmentation on, as the loop measured it),
the final training loss and whether the run converged (``converged``: the mean training
loss of its last ``WINDOW`` epochs is no lower than that of the ``WINDOW`` before by more
than ``REL_TOL`` of it, ``ABS_TOL`` near the floor, or what the epochs' own noise explains:
``NOISE`` standard errors of the difference of the two means), epochs, wall time (first to last
line of the rank logs), median images/s, parameters and bytes exchanged per step. Runs
that differ only in ``seed`` form a setting, reported as mean and sample standard deviation
over its seeds. Reads files only; starts nothing.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from splitnet.errors import SplitnetError

SEED = "seed"
# Convergence: the training loss has stopped falling. Mean of the last WINDOW epochs against
# the WINDOW before; a fall of at most REL_TOL of it (or ABS_TOL, for losses near zero, where
# 2% is round-off), or one within NOISE standard errors of the difference of the two means,
# counts as stopped. The noise term came with the second round of runs, fixed before them:
# an epoch of 7 or 14 steps with dropout has a mean loss that moves by 0.02-0.04 from one
# epoch to the next at lr 0.001, so a flat curve failed the first rule as often as it passed.
WINDOW = 5
REL_TOL = 0.02
ABS_TOL = 0.01
NOISE = 2.0
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class SweepError(SplitnetError):
    """A folder that holds no run, or a file of a run that cannot be read."""


@dataclass
class Run:
    """One run as its files tell it; ``status`` is done, incomplete or missing.

    ``name`` is the Hydra job number for a run its sweep expects, else the folder's name.
    """

    name: str
    overrides: dict[str, str]
    status: str
    folder: str | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # per epoch, mean over its steps
    step_loss: dict[int, float] = field(default_factory=dict)
    wall_s: float | None = None
    images_per_s: float | None = None
    params: int | None = None
    bytes_per_step: float | None = None
    sizes: list[dict[str, int]] = field(default_factory=list)  # where the replicas or accumulation changed
    noise: float = NOISE  # the convergence rule's noise allowance (0: the rule without it)

    @property
    def scored(self) -> list[dict[str, Any]]:
        """The epochs that were evaluated (eval.every > 1 leaves the others without scores)."""
        return [e for e in self.epochs if "top1" in e]

    @property
    def converged(self) -> bool:
        """A finished run whose training loss has stopped falling (see WINDOW, REL_TOL, ABS_TOL,
        and its ``noise`` allowance)."""
        return self.status == "done" and has_converged(self.train_loss, noise=self.noise)

    def value(self, key: str) -> float | None:
        """A summary number by name: top1, top5 (final; top1_centre: the centre crop alone),
        best_top1, best_top5, gap, train_loss, epochs, ..."""
        if not self.epochs:
            return None
        scored = self.scored
        last = scored[-1] if scored else {}
        if key in ("top1", "top5", "val_loss", "top1_centre", "top5_centre", "val_loss_centre"):
            return last.get(key)
        if key in ("best_top1", "best_top5"):
            return max((e[key[5:]] for e in scored), default=None)
        if key == "train_loss":
            return self.train_loss[-1] if self.train_loss else None
        if key == "last_fall":
            return last_fall(self.train_loss)
        if key == "gap":
            # the training loss of the epoch that was last scored, against its validation loss
            if not last or not self.train_loss:
                return None
            return self.train_loss[self.epochs.index(last)] - last["val_loss"]
        if key == "epochs":
            return float(len(self.epochs))
        return getattr(self, key)


def has_converged(train_loss: list[float], window: int = WINDOW, rel_tol: float = REL_TOL,
                  abs_tol: float = ABS_TOL, noise: float = NOISE) -> bool:
    """True when the mean of the last ``window`` epoch losses is not below the mean of the
    ``window`` before by more than ``max(rel_tol * that mean, abs_tol, noise * se)``, ``se``
    the standard error of the difference of the two means (each window's sample variance
    over ``window``). Fewer than ``2 * window`` epochs cannot show it: False."""
    if len(train_loss) < 2 * window or any(math.isnan(v) for v in train_loss[-2 * window:]):
        return False
    last, before = train_loss[-window:], train_loss[-2 * window:-window]
    se = math.sqrt((statistics.variance(last) + statistics.variance(before)) / window)
    fall = statistics.fmean(before) - statistics.fmean(last)
    return fall <= max(rel_tol * statistics.fmean(before), abs_tol, noise * se)


def last_fall(train_loss: list[float], window: int = WINDOW) -> float | None:
    """How much the mean training loss of the last ``window`` epochs fell below the ``window``
    before, as a fraction of the earlier mean (negative: it rose); None for fewer epochs."""
    if len(train_loss) < 2 * window:
        return None
    before = statistics.fmean(train_loss[-2 * window:-window])
    return (before - statistics.fmean(train_loss[-window:])) / before if before else None


@dataclass
class Setting:
    """The runs that differ only in their seed."""

    overrides: dict[str, str]
    runs: list[Run]

    def stats(self, key: str) -> tuple[float, float | None, int] | None:
        """(mean, sample std or None for one run, runs counted) over the finished runs.

        A run still going (or stopped) would pull the mean towards its early epochs; it
        stays in the per-run table and the curves only.
        """
        values = [v for v in (r.value(key) for r in self.runs if r.status == "done") if v is not None]
        if not values:
            return None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


@dataclass
class Sweep:
    root: Path
    runs: list[Run]
    varied: list[str]  # override keys whose values differ between runs, seed included

    @property
    def factors(self) -> list[str]:
        return [k for k in self.varied if k != SEED]

    def settings(self) -> list[Setting]:
        groups: dict[tuple[str, ...], Setting] = {}
        for run in self.runs:
            key = tuple(run.overrides.get(k, "") for k in self.factors)
            groups.setdefault(key, Setting({k: run.overrides.get(k, "") for k in self.factors}, [])).runs.append(run)
        return list(groups.values())


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def expected_overrides(multirun_yaml: Path) -> list[dict[str, str]]:
    """The jobs a Hydra basic-sweeper multirun launches, in job-number order.

    As Hydra does: the sweeper's ``params`` first, then the command line's task overrides
    (a key given on the command line replaces the same key's params entry), each sweep
    expanded to its values, then the cartesian product.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hydra_cfg = yaml.safe_load(multirun_yaml.read_text())["hydra"]
        params = hydra_cfg.get("sweeper", {}).get("params") or {}
        task = hydra_cfg["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise SweepError(f"{multirun_yaml}: not a Hydra multirun record ({exc}); "
                         "report the run folders without it by moving it aside") from exc
    lists: list[list[str]] = []
    index: dict[str, int] = {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(task))
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            choices = [f"{key}={override.get_value_element_as_str()}"]
        if key in index:
            lists[index[key]] = choices
        else:
            index[key] = len(lists)
            lists.append(choices)
    return [dict(_split(o) for o in combo) for combo in itertools.product(*lists)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # The last line may be cut short by a run still writing or killed; any other is corruption.
            if n < len(lines):
                raise SweepError(f"{path}: line {n} is not JSON; the file is corrupt (delete the run "
                                 "folder or move it out of the sweep)") from None
    return records


def _wall_seconds(run_dir: Path) -> float | None:
    stamps = []
    for log in sorted((run_dir / "logs").glob("rank*.log")):
        lines = [m.group(1) for m in map(_STAMP.match, log.read_text().splitlines()) if m]
        stamps += [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (lines[:1] + lines[-1:])]
    return (max(stamps) - min(stamps)).total_seconds() if stamps else None


def _planned(run_dir: Path) -> tuple[int | None, int | None]:
    """(train.epochs, train.max_steps) from the run's saved config, resolved as the run did
    (Hydra saves interpolations unresolved, such as depth_data's budget per data share);
    None where it is not a number."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from splitnet.configs import register_resolver

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None, None
    register_resolver()
    try:
        cfg = OmegaConf.load(path)
        epochs, steps = (OmegaConf.select(cfg, f"train.{key}", default=None) for key in ("epochs", "max_steps"))
    except (OSError, yaml.YAMLError, OmegaConfBaseException):  # resolver errors arrive wrapped
        return None, None
    return (epochs if isinstance(epochs, int) else None), (steps if isinstance(steps, int) and steps > 0 else None)


def read_run(run_dir: Path, name: str, overrides: dict[str, str]) -> Run:
    """A run folder's metrics, summarised; a folder without metrics is a missing run."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return Run(name, overrides, "missing", str(run_dir))
    records = _read_jsonl(metrics)
    by_epoch = {r["epoch"]: r for r in records if r.get("kind") == "epoch"}  # a resumed run's last word
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    steps = [r for r in records if r.get("kind") == "step"]
    losses = {r["step"]: (r["epoch"], r["loss"]) for r in steps if "loss" in r}
    train_loss = []
    for e in epochs:
        mine = [loss for ep, loss in losses.values() if ep == e["epoch"]]
        train_loss.append(statistics.fmean(mine) if mine else math.nan)
    per_step: dict[int, float] = {}
    # the reporting rank's bytes, and every other rank's from its own file (train writes metrics.jsonl alone)
    others = [r for path in sorted((run_dir / "logs").glob("rank*.metrics.jsonl")) for r in _read_jsonl(path)]
    for r in steps + [r for r in others if r.get("kind") == "step"]:
        per_step[r["step"]] = per_step.get(r["step"], 0.0) + r.get("comm_bytes", 0)
    speeds = [r["images_per_s"] for r in steps if "images_per_s" in r]
    params = None
    if (run_dir / "plan.json").is_file():
        params = json.loads((run_dir / "plan.json").read_text()).get("totals", {}).get("params")
    sizes = size_changes(steps)
    max_epochs, max_steps = _planned(run_dir)
    last_step = max(losses, default=0)
    done = bool(epochs) and ((max_epochs is not None and epochs[-1]["epoch"] + 1 >= max_epochs)
                             or (max_steps is not None and epochs[-1]["step"] >= max_steps))
    return Run(name, overrides, "done" if done else "incomplete", str(run_dir), epochs, train_loss,
               {s: loss for s, (_, loss) in losses.items() if s <= last_step}, _wall_seconds(run_dir),
               statistics.median(speeds) if speeds else None, params,
               statistics.fmean(per_step.values()) if per_step else None, sizes)


def size_changes(steps: list[dict[str, Any]]) -> list[dict[str, int]]:
    """The first step of each stretch of one (replicas, accumulate), one series across restarts: a
    step logged again by a resumed attempt counts as the resumed attempt logged it."""
    size = {r["step"]: (r["replicas"], r.get("accumulate", 1)) for r in steps if "replicas" in r}
    changes: list[dict[str, int]] = []
    for step in sorted(size):
        replicas, accumulate = size[step]
        if not changes or (changes[-1]["replicas"], changes[-1]["accumulate"]) != (replicas, accumulate):
            changes.append({"step": step, "replicas": replicas, "accumulate": accumulate})
    return changes


def _run_dirs(root: Path) -> list[Path]:
    if (root / "metrics.jsonl").is_file():
        return [root]
    found = {p.parent for p in root.rglob("metrics.jsonl")}
    found |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    return sorted((p for p in found if p != root), key=lambda p: [int(t) if t.isdigit() else t for t in p.parts])


def _overrides_of(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return dict(_split(o) for o in yaml.safe_load(path.read_text()) or [])


def collect(root: str | Path) -> Sweep:
    """Every run under ``root`` (and every run its multirun.yaml expects), in job order."""
    root = Path(root)
    if not root.is_dir():
        raise SweepError(f"{root}: no such folder; give a run folder or a sweep folder (splitnet train -m)")
    dirs = _run_dirs(root)
    found = [(d, _overrides_of(d)) for d in dirs]
    runs: list[Run] = []
    if (root / "multirun.yaml").is_file():
        unclaimed = list(found)
        for job, want in enumerate(expected_overrides(root / "multirun.yaml")):
            match = next((f for f in unclaimed if f[1] == want), None)
            if match is None:
                runs.append(Run(str(job), want, "missing"))
                continue
            unclaimed.remove(match)
            runs.append(read_run(match[0], str(job), want))
        found = unclaimed
    runs += [read_run(d, d.relative_to(root).as_posix() if d != root else d.name, o) for d, o in found]
    if not runs:
        raise SweepError(f"{root}: no run found (no metrics.jsonl, no .hydra/overrides.yaml, no multirun.yaml); "
                         "point at a `splitnet train` run folder or a `splitnet train -m` sweep folder")
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    varied = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    return Sweep(root, runs, varied)


def loss_difference(sweep: Sweep) -> dict[str, float | None]:
    """Per run, the largest per-step training-loss difference from the first run of the same seed.

    Runs that train the same network (strategies, or settings that change only evaluation)
    show float32 round-off or exactly 0 here; runs that differ in what they train do not.
    """
    first: dict[str, Run] = {}
    out: dict[str, float | None] = {}
    for run in sweep.runs:
        ref = first.setdefault(run.overrides.get(SEED, ""), run)
        common = sorted(set(ref.step_loss) & set(run.step_loss))
        out[run.name] = max((abs(run.step_loss[s] - ref.step_loss[s]) for s in common), default=None)
    return out


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _mean_std(stats: tuple[float, float | None, int] | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    if stats is None:
        return ""
    mean, std, _ = stats
    return format(mean * scale, fmt) + ("" if std is None else " ± " + format(std * scale, fmt))


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(sweep: Sweep) -> str:
    """The report: runs, then settings (mean ± std over seeds), then what is missing."""
    diff = loss_difference(sweep)
    any_bytes = any(r.bytes_per_step for r in sweep.runs)
    header = ["run", *sweep.varied, "status", "epochs", "top-1 % final", "top-1 % best", "top-5 % final",
              "top-5 % best", "loss gap", "train loss final", "last fall %", "converged", "wall s", "img/s", "params",
              *(["MB/step"] if any_bytes else []), "Δloss"]
    rows = []
    for r in sweep.runs:
        rows.append([r.name, *(r.overrides.get(k, "") for k in sweep.varied), r.status,
                     _num(r.value("epochs"), ".0f"), _pct(r.value("top1")), _pct(r.value("best_top1")),
                     _pct(r.value("top5")), _pct(r.value("best_top5")), _num(r.value("gap")),
                     _num(r.value("train_loss")), _num(_scaled(r.value("last_fall"), 100), ".0f"),
                     ("yes" if r.converged else "no") if r.status == "done" else "",
                     _num(r.wall_s, ".0f"), _num(r.images_per_s, ".0f"),
                     "" if r.params is None else f"{r.params:,}",
                     *([_num((r.bytes_per_step or 0) / 1e6, ".2f")] if any_bytes else []),
                     "" if diff[r.name] is None else f"{diff[r.name]:.1e}"])
    out = [f"# Sweep {sweep.root}", "", _table(header, rows), "",
           "top-1/top-5: held-out accuracy; loss gap: training loss (mean over the last epoch's steps) minus "
           f"validation loss; last fall: how much the mean training loss of the last {WINDOW} epochs fell below "
           f"the {WINDOW} before; converged: it stopped falling (within {REL_TOL:.0%}, {ABS_TOL}, or "
           f"{NOISE:g} standard errors of the two means' difference); wall s: first to last "
           "log line; img/s: median training throughput; MB/step: bytes "
           "every rank received per step, summed; Δloss: largest per-step training-loss difference from the "
           "first run with the same seed (0 or round-off: the same network was trained)."]
    settings = sweep.settings()
    if len(settings) < len(sweep.runs):
        srows = []
        for s in settings:
            done = sum(r.status == "done" for r in s.runs)
            conv = sum(r.converged for r in s.runs)
            wall = s.stats("wall_s")
            speed = s.stats("images_per_s")
            srows.append([*(s.overrides[k] for k in sweep.factors), f"{done} of {len(s.runs)}", str(conv),
                          _mean_std(s.stats("top1")), _mean_std(s.stats("best_top1")), _mean_std(s.stats("top5")),
                          _mean_std(s.stats("gap"), 1.0, ".3f"), _mean_std(wall, 1.0, ".0f"),
                          _mean_std(speed, 1.0, ".0f")])
        out += ["", "## Settings (mean ± sample std over seeds)", "",
                _table([*sweep.factors, "seeds done", "converged", "top-1 % final", "top-1 % best", "top-5 % final",
                        "loss gap", "wall s", "img/s"], srows)]
    if len(sweep.factors) == 2:
        out += ["", grid(sweep)]
    resized = [r for r in sweep.runs if len(r.sizes) > 1]
    if resized:
        out += ["", "## Size changes (elastic restarts; the global batch stays)", ""]
        out += [f"- {r.name}: " + "; ".join(
            f"from step {c['step']}: {c['replicas']} replica(s) x {c['accumulate']} micro-step(s)"
            for c in r.sizes) for r in resized]
    missing = [r for r in sweep.runs if r.status != "done"]
    if missing:
        out += ["", f"## Not finished: {len(missing)} of {len(sweep.runs)} runs", ""]
        out += [f"- {r.name}: {r.status}" + (f" ({len(r.epochs)} epochs so far)" if r.epochs else "") + ": "
                + " ".join(f"{k}={v}" for k, v in r.overrides.items()) for r in missing]
    return "\n".join(out) + "\n"


def grid(sweep: Sweep) -> str:
    """A two-factor sweep as a grid of final top-1 (mean ± std over seeds, finished runs),
    with the best row of every column and the gain of every row from its first column to
    its last (for depth x data: the best depth per data size, the gain of a depth from data)."""
    rows_key, cols_key = sweep.factors
    cells = {(s.overrides[rows_key], s.overrides[cols_key]): s for s in sweep.settings()}
    rows = list(dict.fromkeys(k[0] for k in cells))
    cols = list(dict.fromkeys(k[1] for k in cells))

    def mean(r: str, c: str) -> float | None:
        stats = cells[(r, c)].stats("top1") if (r, c) in cells else None
        return None if stats is None else stats[0]

    body = []
    for r in rows:
        first, last = mean(r, cols[0]), mean(r, cols[-1])
        gain = "" if first is None or last is None else f"{100 * (last - first):+.1f}"
        body.append([r, *(_mean_std(cells[(r, c)].stats("top1")) if (r, c) in cells else "" for c in cols), gain])
    best = []
    for c in cols:
        known = [(mean(r, c), r) for r in rows if mean(r, c) is not None]
        best.append(max(known)[1] if known else "")
    body.append([f"best {rows_key}", *best, ""])
    return "\n".join([f"## Final top-1 %: {rows_key} x {cols_key} (mean ± std over seeds)", "",
                      _table([f"{rows_key} \\ {cols_key}", *cols, f"gain {cols[0]} -> {cols[-1]}"], body)])


def to_json(sweep: Sweep) -> dict[str, Any]:
    diff = loss_difference(sweep)
    runs = []
    for r in sweep.runs:
        d = asdict(r)
        d.pop("step_loss")
        d.update({k: r.value(k) for k in ("top1", "top5", "best_top1", "best_top5", "gap")})
        d.update(converged=r.converged, final_train_loss=r.value("train_loss"), last_fall=r.value("last_fall"))
        d["loss_difference"] = diff[r.name]
        runs.append(d)
    settings = [{"overrides": s.overrides, "runs": [r.name for r in s.runs],
                 "converged": sum(r.converged for r in s.runs),
                 **{k: s.stats(k) for k in ("top1", "best_top1", "top5", "best_top5", "gap", "train_loss", "wall_s",
                                            "images_per_s")}}
                for s in sweep.settings()]
    return {"root": str(sweep.root), "varied": sweep.varied, "runs": runs, "settings": settings,
            "missing": [r.name for r in sweep.runs if r.status == "missing"],
            "incomplete": [r.name for r in sweep.runs if r.status == "incomplete"]}
