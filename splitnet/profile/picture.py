"""The profile as a picture: per rank, the planned and the measured peak as stacked bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from splitnet.profile.account import CATEGORIES

_COLOUR = {"parameters": "#1f77b4", "gradients": "#ff7f0e", "optimizer": "#2ca02c", "activations": "#d62728",
           "backward": "#e377c2", "exchange": "#9467bd", "input": "#8c564b", "other": "#7f7f7f"}


def draw_profile(report: dict[str, Any], path: str | Path) -> Path:
    ranks = report["ranks"]
    fig = Figure(figsize=(max(5.0, 1.6 * len(ranks) + 3), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mib = 2**20
    for i, r in enumerate(ranks):
        for offset, key in ((-0.2, "planned"), (0.2, "at_peak")):
            bottom = 0.0
            for c in CATEGORIES:
                value = (r["breakdown"][c][key] or 0) / mib
                ax.bar(i + offset, value, 0.38, bottom=bottom, color=_COLOUR[c],
                       label=c if (i, key) == (0, "at_peak") else None, hatch="//" if key == "planned" else None,
                       edgecolor="white")
                bottom += value
    ax.set_xticks(range(len(ranks)), [f"rank {r['rank']}\nplanned | measured" for r in ranks], fontsize=8)
    ax.set_ylabel("peak tensor memory (MiB)")
    mesh = report["mesh"]
    ax.set_title(f"{report['model']} {report['strategy']}, {mesh['devices']} device(s), batch "
                 f"{report['batch_size']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
