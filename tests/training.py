"""Shared helpers for the training tests: configs composed from conf/, runs in tmp folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"

# A tiny, fast, deterministic job: synthetic data, 3 batches of 16 per epoch.
FAST = ["data=synthetic", "data.num_classes=10", "data.train_batches=3", "data.val_batches=1",
        "batch_size=16", "eval.batch_size=16", "comm.timeout_s=60"]


def config(*overrides: str) -> dict[str, Any]:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def train(run_dir: Path, *overrides: str) -> dict[str, Any]:
    from splitnet.launchers import choose_launcher
    from splitnet.train.job import run_train

    cfg = config(*overrides)
    return run_train(cfg, run_dir, choose_launcher(cfg))
