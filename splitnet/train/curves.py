"""The loss and accuracy curves of a run, as a PNG beside its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_curves(metrics_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    steps = [r for r in records if r.get("kind") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("kind") == "epoch" and "top1" in r]  # none with eval.enabled=false
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, color="#1f77b4",
                 label="training loss (per step)")
    if epochs:
        ax_loss.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", color="#d62728",
                     label="validation loss")
        ax_acc.plot([r["epoch"] + 1 for r in epochs], [100 * r["top1"] for r in epochs], "o-", label="top-1")
        if all("top5" in r for r in epochs):  # not on 5 classes or fewer
            ax_acc.plot([r["epoch"] + 1 for r in epochs], [100 * r["top5"] for r in epochs], "s--", label="top-5")
        ax_acc.legend()
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
