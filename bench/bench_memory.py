"""Peak tensor memory per device, planned vs measured, for each strategy at D = 1, 2, 4.

Runs ``splitnet profile`` (synthetic data, ``profile.steps`` training steps) for every
(strategy, devices) pair and prints a Markdown table: the plan's per-device peak, the
measured peak (the largest over the ranks, exact allocator accounting), their ratio,
and the measured peak against D=1 of the same strategy. Also draws the table as a PNG,
beside each run's own profile picture.

    python bench/bench_memory.py [model=alexnet] [batch_size=128] [out=bench/memory.png]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STRATEGIES = ("columns", "pipeline", "hybrid")
DEVICES = (1, 2, 4)


def profile(model: str, batch: int, strategy: str, devices: int, pictures: Path) -> dict:
    picture = pictures / f"profile_{model}_{strategy}_D{devices}.png"
    cmd = [sys.executable, "-m", "splitnet", "profile", f"model={model}", f"batch_size={batch}",
           f"partition={strategy}", f"mesh.devices={devices}", "format=json", f"picture={picture}"]
    print(f"bench_memory: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv)
    model, batch = args.get("model", "alexnet"), int(args.get("batch_size", 128))
    out = Path(args.get("out", "bench/memory.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for strategy in STRATEGIES:
        base = None
        for d in DEVICES:
            report = profile(model, batch, strategy, d, out.parent)
            worst = max(report["ranks"], key=lambda r: r["measured_peak_bytes"])
            planned = max(r["planned_peak_bytes"] for r in report["ranks"])
            base = base or worst["measured_peak_bytes"]
            rows.append((strategy, d, planned, worst["measured_peak_bytes"], worst["rss_peak_bytes"], base))
    mib = 2**20
    print("| strategy | D | planned peak / device | measured peak / device | planned / measured | "
          "measured vs D=1 | peak RSS |\n|---|---|---|---|---|---|---|")
    for strategy, d, planned, measured, rss, base in rows:
        print(f"| {strategy} | {d} | {planned / mib:,.0f} MiB | {measured / mib:,.0f} MiB | {planned / measured:.3f} | "
              f"{measured / base:.2f}x | {rss / mib:,.0f} MiB |")
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (_, _, planned, measured, _, _) in enumerate(rows):
        ax.bar(i - 0.2, planned / mib, 0.38, color="#9ecae1", label="planned" if i == 0 else None)
        ax.bar(i + 0.2, measured / mib, 0.38, color="#d62728", label="measured" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [f"{s}\nD={d}" for s, d, *_ in rows], fontsize=7)
    ax.set_ylabel("peak tensor memory per device (MiB)")
    ax.set_title(f"{model}, batch {batch}: planned vs measured peak per device", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
