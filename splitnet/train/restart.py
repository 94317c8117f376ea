"""How a restarted training job continues: from its run folder's latest complete checkpoint.

torchrun (``--max-restarts``) and Ray (``launcher.max_failures``) restart every rank of a
job after one fails, with the config the ``restart`` function they are handed returns:
for training, ``resumed``. The new ranks run the same config with ``train.resume=auto``
once the run folder holds a complete checkpoint, so they continue where the job last
saved, and no flag is needed. Before the first checkpoint a restart starts the way the
job first started (fresh, or from the checkpoint ``train.resume`` named).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitnet.train.checkpoint import complete_checkpoints


def resumed(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` for a restarted attempt (``cfg["run_dir"]`` is the job's run folder)."""
    if not complete_checkpoints(Path(cfg["run_dir"]) / "checkpoints"):
        return cfg
    return {**cfg, "train": {**cfg["train"], "resume": "auto"}}
