"""A suite's result as JSON, a markdown table and a PNG bar chart of its ratios.

Every table carries its machine line (cores, CPU, load average before and after), so
a figure never travels without the conditions it was measured under.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (JSON key, column title, format) of the markdown table, when a suite's rows have the key
COLUMNS = [
    ("images_per_s", "images/s (median)", "{:,.1f}"),
    ("range", "min - max", "{}"),
    ("ratio", "ratio (same round)", "{:.2f}"),
    ("ratio_range", "ratio min - max", "{}"),
    ("images_per_cpu_s", "images/CPU-s", "{:,.1f}"),
    ("cpu_ratio", "CPU ratio (same round)", "{:.2f}"),
    ("step_s", "step s", "{:.3f}"),
    ("decode_s", "CPU s/batch, slowest rank", "{:.3f}"),
    ("exchange_s", "in exchanges s", "{:.3f}"),
    ("blocked_s", "blocked s", "{:.3f}"),
    ("bytes_per_step", "bytes in/step/device", "{:,.0f}"),
    ("planned_bytes_per_step", "planned bytes", "{:,.0f}"),
    ("exchange_share", "exchange share of step", "{:.1%}"),
    ("unblocked_share", "share not blocked", "{:.1%}"),
]


def _cells(row: dict[str, Any], rate: str) -> dict[str, Any]:
    cells = dict(row)
    if row.get(f"{rate}_min") is not None:
        cells["range"] = f"{row[f'{rate}_min']:,.1f} - {row[f'{rate}_max']:,.1f}"
    if row.get("ratio_min") is not None:
        cells["ratio_range"] = f"{row['ratio_min']:.2f} - {row['ratio_max']:.2f}"
    if row.get("exchange_s") is not None and row.get("step_s"):
        cells["exchange_share"] = row["exchange_s"] / row["step_s"]
    if row.get("unblocked_exchange_s") is not None and row.get("step_s"):  # copies and issuing: no transfer, no peer
        cells["unblocked_share"] = row["unblocked_exchange_s"] / row["step_s"]
    return cells


def machine_line(m: dict[str, Any]) -> str:
    after = f", after {m['load_avg_after']}" if "load_avg_after" in m else ""
    return (f"{m['cores']} cores ({m['cpu']}), {m.get('memory_gib', '?')} GiB, torch {m['torch']}, "
            f"load average {m['load_avg']} before{after}")


def markdown(result: dict[str, Any]) -> str:
    rate = result.get("rate", "images_per_s")
    rows = [_cells(r, rate) for r in result["rows"]]
    cols = [(k, title, fmt) for k, title, fmt in COLUMNS if any(r.get(k) is not None for r in rows)]
    head = "| contender | " + " | ".join(title for _, title, _ in cols) + " |"
    lines = [f"### {result['title']}", "", f"Machine: {machine_line(result['machine'])}.", "", head,
             "| --- " * (len(cols) + 1) + "|"]
    for r in rows:
        cells = ["-" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in cols]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw(result: dict[str, Any], path: Path) -> None:
    """Horizontal bars: each contender's median ratio, whiskers from its rounds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("ratio") is not None][::-1]
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.6))
    ratios = [r["ratio"] for r in rows]
    low = [r["ratio"] - r["ratio_min"] for r in rows]
    high = [r["ratio_max"] - r["ratio"] for r in rows]
    colours = ["#888888" if i == len(rows) - 1 else "#d62728" if r["name"].startswith("torch") else "#1f77b4"
               for i, r in enumerate(rows)]
    ax.barh([r["name"] for r in rows], ratios, xerr=[low, high], color=colours, capsize=3)
    for i, r in enumerate(rows):
        ax.text(r["ratio_max"], i, f"  {r['ratio']:.2f}", va="center", fontsize=8)
    cpu = [(i, r["cpu_ratio"]) for i, r in enumerate(rows) if r.get("cpu_ratio") is not None]
    if cpu:  # the figure a shared machine distorts least
        ax.plot([c for _, c in cpu], [i for i, _ in cpu], "D", color="black", ms=4,
                label="images per CPU-second, same ratio")
        ax.legend(loc="lower right", fontsize=7)
    ax.axvline(1.0, color="#444444", lw=0.8)
    ax.set_xlabel(result.get("xlabel", "ratio to the baseline, within each round (median; whiskers: min-max)"))
    where = machine_line(result["machine"]).replace(", load", ",\nload")
    ax.set_title(f"{result['title']}\n{where}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], out: str | Path) -> list[Path]:
    """``<suite>.json``, ``<suite>.md`` and ``<suite>.png`` in ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    name = result["suite"]
    paths = [folder / f"{name}.json", folder / f"{name}.md", folder / f"{name}.png"]
    paths[0].write_text(json.dumps(result, indent=1))
    paths[1].write_text(markdown(result))
    draw(result, paths[2])
    return paths
