"""``splitnet export``: a sharded checkpoint merged into the reference's single-device state_dict."""

from __future__ import annotations

from pathlib import Path

import torch

from splitnet.atomic import write_atomic
from splitnet.train.checkpoint import find_checkpoint, merged_state


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's merged state_dict (the reference's layout), atomically."""
    state = merged_state(find_checkpoint(ckpt))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: torch.save(state, p))
    return path
