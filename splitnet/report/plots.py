"""The pictures of ``splitnet report``: curves overlaid per setting, a heatmap for two factors.

``curves.png``: held-out top-1 error and the training and validation loss per epoch, one
colour per setting (the mean over its seeds, a band of +-1 sample std where there are
several). ``heatmap.png``, when exactly two settings vary besides the seed: the mean
final top-1 error of every cell, annotated with mean and std. ``verdicts.png`` (beside the
verdicts' JSON): each claim's effect and interval against zero.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

from splitnet.report.sweep import Setting, Sweep


def _label(setting: Setting) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.overrides.items()) or "all runs"


def _by_epoch(setting: Setting, series: str) -> tuple[list[int], list[float], list[float]]:
    """Epoch numbers (1-based), mean and std of a per-epoch series over the setting's runs."""
    values: dict[int, list[float]] = {}
    for run in setting.runs:
        for i, e in enumerate(run.epochs):
            if series == "train_loss":
                v = run.train_loss[i] if i < len(run.train_loss) else None
            elif "top1" not in e:  # an epoch left unscored (eval.every)
                continue
            else:
                v = 100 * (1 - e["top1"]) if series == "error" else e["val_loss"]
            if v is not None and v == v:
                values.setdefault(e["epoch"] + 1, []).append(v)
    xs = sorted(values)
    means = [statistics.fmean(values[x]) for x in xs]
    stds = [statistics.stdev(values[x]) if len(values[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds


def draw_sweep_curves(sweep: Sweep, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, setting in enumerate(sweep.settings()):
        colour = f"C{i % 10}"
        xs, mean, std = _by_epoch(setting, "error")
        ax_err.plot(xs, mean, "o-", color=colour, ms=3, label=f"{_label(setting)} ({len(setting.runs)} runs)")
        ax_err.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=colour, alpha=0.15)
        xs, mean, _ = _by_epoch(setting, "train_loss")
        ax_loss.plot(xs, mean, "-", color=colour, label=f"{_label(setting)}: train")
        xs, mean, _ = _by_epoch(setting, "val_loss")
        ax_loss.plot(xs, mean, "--", color=colour, label=f"{_label(setting)}: validation")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("held-out top-1 error (%)")
    ax_err.set_title("validation error (mean, band: ±1 std over seeds)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("training (solid) and validation (dashed) loss")
    for ax in (ax_err, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def draw_heatmap(sweep: Sweep, out: Path) -> Path | None:
    """None unless exactly two factors vary (besides the seed). Cells count finished runs only."""
    if len(sweep.factors) != 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    rows_key, cols_key = sweep.factors
    cells = {(s.overrides[rows_key], s.overrides[cols_key]): s for s in sweep.settings()}
    rows = list(dict.fromkeys(k[0] for k in cells))
    cols = list(dict.fromkeys(k[1] for k in cells))
    grid = [[float("nan")] * len(cols) for _ in rows]
    fig, ax = plt.subplots(figsize=(1.8 * len(cols) + 2.5, 1.2 * len(rows) + 1.5))
    for (r, c), setting in cells.items():
        stats = setting.stats("top1")
        if stats is None:
            continue
        mean, std, n = stats
        grid[rows.index(r)][cols.index(c)] = 100 * (1 - mean)
        spread = "" if std is None else f"\n± {100 * std:.1f}"
        text = f"{100 * (1 - mean):.1f}{spread}\n({n} run{'s' if n > 1 else ''})"
        ax.text(cols.index(c), rows.index(r), text, ha="center", va="center", fontsize=9, color="white",
                path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])  # readable on any cell
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label="final held-out top-1 error (%)")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(cols_key)
    ax.set_ylabel(rows_key)
    ax.set_title("final held-out top-1 error (%), mean over seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


_VERDICT_COLOURS = {"reproduced": "C2", "contradicted": "C3", "inconclusive": "C7"}


def draw_verdicts(verdicts: list[dict[str, Any]], out: Path) -> list[str]:
    """``verdicts.png``: one row per claim, its effect (points of held-out top-1, the paper's
    setting minus the other) and 95% interval against zero, coloured by verdict; a claim
    without an interval is written out instead. Returns the claims drawn with a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.55 * len(verdicts) + 1.6))
    drawn = []
    for row, v in enumerate(verdicts):
        y = len(verdicts) - 1 - row
        label = f"{v['verdict']}, {len(v['seeds'])} seed(s)"
        if v["effect"] is None:
            ax.text(0.99, y, label, ha="right", va="center", fontsize=8,
                    color="0.4", transform=ax.get_yaxis_transform())  # at the right edge, whatever the scale
            continue
        colour = _VERDICT_COLOURS.get(v["verdict"], "C0")
        if v["interval"] is not None:
            low, high = v["interval"]
            ax.plot([low, high], [y, y], "-", color=colour, lw=2)
        ax.plot([v["effect"]], [y], "o", color=colour)
        ax.annotate(label, (v["effect"], y), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7,
                    color=colour)
        drawn.append(v["claim"])
    ends = [x for v in verdicts for x in (v["interval"] or [v["effect"]]) if x is not None]
    ax.set_xlim(min([0.0, *ends]) - 1, max([0.0, *ends]) + 1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(verdicts)), [textwrap.shorten(v["claim"], 70) for v in reversed(verdicts)], fontsize=8)
    ax.set_ylim(-0.7, len(verdicts) - 0.3)
    ax.set_xlabel("effect on held-out top-1 (points; the paper's side is right of 0), 95% t interval")
    ax.set_title("the paper's claims: verdicts from converged runs, paired by seed")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return drawn
