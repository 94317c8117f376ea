"""Verdicts on the paper's claims from paired runs, by criteria fixed before the runs.

A claim names a sweep and a contrast between its settings: for a plain comparison, the
paper's setting minus the alternative (+1 and -1); for an interaction, four settings. Runs
are paired by seed (same initial weights, same batch order), and a seed counts only when
every run the contrast needs finished and converged (``Run.converged``). Per seed the
contrast of final held-out top-1 gives one difference; over the seeds, the mean and its 95%
interval by Student's t. The verdict: "reproduced" when the interval lies wholly on the
paper's side of zero, "contradicted" when wholly on the other, "inconclusive" when it holds
zero, "not measured" with fewer than two converged seeds (no interval exists).

A claim that settings train one network (``Agreement``: the strategies) has no side to
favour: per seed the largest absolute difference of final top-1 between its settings, and the
verdict "reproduced" when every seed whose runs all converged has them equal (within
``tolerance``, a fraction: float round-off of the accuracy, not a held-out image), else
"contradicted"; "not measured" without such a seed. Its ``effect`` is the largest difference
over those seeds, its ``interval`` null.

    python -m splitnet.report.verdict SWEEPS_ROOT [out=FILE] [noise=N]

reads ``SWEEPS_ROOT/<sweep>`` for every claim in ``CLAIMS`` and prints the list, or writes it
to FILE with its picture beside it (FILE's name, ``.png``). ``noise=0`` judges with the
convergence rule's noise allowance dropped (``splitnet.report.sweep.NOISE``): how much a
verdict leans on it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnet.report.sweep import SEED, Run, Sweep, SweepError, collect

# Two-sided 95% quantiles of Student's t, t(0.975, df) for df = 1..30 (to 3 decimals; the
# tests check each against the t density integrated numerically).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t975(df: int) -> float:
    """t(0.975, df): the table up to 30 degrees of freedom, beyond it the Cornish-Fisher
    expansion around the normal quantile (within 0.001 of the exact value there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df} must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_interval(differences: list[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean of the per-seed differences and its 95% t interval (None for fewer than 2)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None
    half = t975(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, (mean - half, mean + half)


def verdict(interval: tuple[float, float] | None) -> str:
    """The verdict for an interval of (paper's side minus the other): see the module text."""
    if interval is None:
        return "not measured"
    low, high = interval
    if low > 0:
        return "reproduced"
    if high < 0:
        return "contradicted"
    return "inconclusive"


@dataclass(frozen=True)
class Claim:
    """A claim and its contrast: ``terms`` are (coefficient, the overrides that pick a setting).

    ``term_metrics``, where given, names each term's own metric: two scorings of the same
    runs (the centre crop against the crops' average) make a contrast within each run.
    """

    claim: str
    sweep: str
    terms: tuple[tuple[float, tuple[tuple[str, str], ...]], ...]
    command: str
    metric: str = "top1"
    term_metrics: tuple[str, ...] = ()

    def metrics(self) -> tuple[str, ...]:
        return self.term_metrics or (self.metric,) * len(self.terms)


@dataclass(frozen=True)
class Agreement:
    """A claim that every value of ``key`` in ``settings`` gives the same final ``metric``."""

    claim: str
    sweep: str
    key: str
    settings: tuple[str, ...]
    command: str
    metric: str = "top1"
    tolerance: float = 1e-6


def _pair(name: str, sweep: str, key: str, paper: str, other: str, command: str,
          fixed: tuple[tuple[str, str], ...] = ()) -> Claim:
    return Claim(name, sweep, ((1.0, ((key, paper), *fixed)), (-1.0, ((key, other), *fixed))), command)


def _crops(name: str, flip: str) -> Claim:
    # one run scores both ways (evaluate.score): the crops' average minus its centre crop
    run = (("data.flip", flip),)
    return Claim(name, "test_crops", ((1.0, run), (-1.0, run)), "splitnet train -m +experiment=test_crops",
                 term_metrics=("top1", "top1_centre"))


_DEEP, _SHALLOW, _MOST, _LEAST = "6", "2", "1.0", "0.02"

# Fixed before the runs (issue 19): which settings each claim compares, in the paper's direction.
CLAIMS: tuple[Claim | Agreement, ...] = (
    _pair("data augmentation raises held-out accuracy (overfitting regime, 4.1)", "augment",
          "data.augment", "true", "false", "splitnet train -m +experiment=augment"),
    _pair("dropout 0.5 raises held-out accuracy (overfitting regime, 4.2)", "dropout",
          "arch.dropout_kind", "inverted", "none", "splitnet train -m +experiment=dropout"),
    _pair("the paper's dropout (outputs times 0.5 at test time) raises held-out accuracy (4.2)", "dropout",
          "arch.dropout_kind", "paper", "none", "splitnet train -m +experiment=dropout"),
    _pair("two towers beat one tower with half the kernels (3.2)", "towers",
          "model", "alexnet_small", "alexnet_small_onetower", "splitnet train -m +experiment=towers"),
    _pair("LRN raises held-out accuracy (3.3; overlapping pools)", "lrn_pool",
          "arch.lrn", "true", "false", "splitnet train -m +experiment=lrn_pool", (("arch.pool", "3"),)),
    _pair("overlapping 3/2 pooling beats 2/2 (3.4; with LRN)", "lrn_pool",
          "arch.pool", "3", "2", "splitnet train -m +experiment=lrn_pool", (("arch.lrn", "true"),)),
    _crops("averaging the ten test-time crops beats the centre crop (4.1; trained with flips)", "true"),
    _crops("averaging five unmirrored crops beats the centre crop (4.1; trained without flips)", "false"),
    Claim("depth pays only with data: (6 - 2 conv layers) at 100% minus the same at 2% of the data",
          "depth_data",
          ((1.0, (("arch.depth", _DEEP), ("data.fraction", _MOST))),
           (-1.0, (("arch.depth", _SHALLOW), ("data.fraction", _MOST))),
           (-1.0, (("arch.depth", _DEEP), ("data.fraction", _LEAST))),
           (1.0, (("arch.depth", _SHALLOW), ("data.fraction", _LEAST)))),
          "splitnet train -m +experiment=depth_data"),
    Agreement("columns, pipeline and hybrid train one network: equal final accuracy", "strategies",
              "partition", ("columns", "pipeline", "hybrid"), "splitnet train -m +experiment=strategies"),
)


def _matches(run: Run, picks: tuple[tuple[str, str], ...]) -> bool:
    return all(run.overrides.get(k, "").lower() == v.lower() for k, v in picks)


def judge(claim: Claim | Agreement, sweep: Sweep) -> dict[str, Any]:
    """The claim's verdict from the sweep's converged runs, paired by seed."""
    if isinstance(claim, Agreement):
        return _judge_agreement(claim, sweep)
    by_seed: dict[str, list[Run | None]] = {}
    for i, (_, picks) in enumerate(claim.terms):
        for run in sweep.runs:
            if _matches(run, picks):
                by_seed.setdefault(run.overrides.get(SEED, ""), [None] * len(claim.terms))[i] = run
    differences, seeds, converged = [], [], 0
    metrics = claim.metrics()
    for seed, runs in sorted(by_seed.items()):
        distinct = {id(r): r for r in runs if r is not None}.values()
        converged += sum(r.converged for r in distinct)
        values = [None if r is None or not r.converged else r.value(m) for r, m in zip(runs, metrics, strict=True)]
        if None not in values:
            differences.append(sum(c * v for (c, _), v in zip(claim.terms, values, strict=True)))
            seeds.append(seed)
    effect, interval = paired_interval(differences) if differences else (None, None)
    return {"claim": claim.claim, "verdict": verdict(interval),
            "effect": None if effect is None else round(100 * effect, 2),
            "interval": None if interval is None else [round(100 * v, 2) for v in interval],
            "seeds": seeds, "converged_runs": converged,
            "runs": sum(len({id(r) for r in runs if r is not None}) for runs in by_seed.values()),
            "command": claim.command}


def _judge_agreement(claim: Agreement, sweep: Sweep) -> dict[str, Any]:
    by_seed: dict[str, dict[str, Run]] = {}
    for run in sweep.runs:
        setting = run.overrides.get(claim.key, "").lower()
        if setting in claim.settings:
            by_seed.setdefault(run.overrides.get(SEED, ""), {})[setting] = run
    spreads, seeds, converged = [], [], 0
    for seed, runs in sorted(by_seed.items()):
        converged += sum(r.converged for r in runs.values())
        values = [r.value(claim.metric) for r in runs.values() if r.converged]
        if len(runs) == len(claim.settings) and len(values) == len(runs) and None not in values:
            spreads.append(max(values) - min(values))
            seeds.append(seed)
    if not spreads:
        outcome = "not measured"
    else:
        outcome = "reproduced" if max(spreads) <= claim.tolerance else "contradicted"
    return {"claim": claim.claim, "verdict": outcome,
            "effect": round(100 * max(spreads), 2) if spreads else None, "interval": None,
            "seeds": seeds, "converged_runs": converged, "runs": sum(len(r) for r in by_seed.values()),
            "command": claim.command}


def judge_all(root: Path, claims: tuple[Claim | Agreement, ...] = CLAIMS,
              noise: float | None = None) -> list[dict[str, Any]]:
    """Every claim against ``root/<its sweep>``; a sweep not run gives "not measured".
    ``noise``: the convergence rule's noise allowance, where not the default (0 drops it: a
    check of how much a verdict leans on it)."""
    out = []
    for claim in claims:
        folder = root / claim.sweep
        sweep = collect(folder) if folder.is_dir() else Sweep(folder, [], [])
        if noise is not None:
            for run in sweep.runs:
                run.noise = noise
        out.append(judge(claim, sweep))
    return out


def main(argv: list[str]) -> int:
    args = [a for a in argv if "=" not in a]
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(options) - {"out", "noise"})
    if len(args) != 1 or unknown:
        print("usage: python -m splitnet.report.verdict SWEEPS_ROOT [out=FILE] [noise=N]"
              + (f" (unknown option(s) {unknown})" if unknown else ""), file=sys.stderr)
        return 2
    try:
        noise = float(options["noise"]) if "noise" in options else None
    except ValueError:
        print(f"verdict: error: noise={options['noise']!r} is not a number", file=sys.stderr)
        return 2
    try:
        verdicts = judge_all(Path(args[0]), noise=noise)
    except SweepError as exc:
        print(f"verdict: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(verdicts, indent=1) + "\n"
    if "out" in options:
        from splitnet.report.plots import draw_verdicts

        out = Path(options["out"])
        out.write_text(text)
        picture = out.with_suffix(".png")
        draw_verdicts(verdicts, picture)
        print(f"wrote {out} and {picture}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
