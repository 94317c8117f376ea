"""Where splitnet's shipped configuration files live, and reading a model's by name.

``$SPLITNET_CONF`` when set, else the repository's ``conf/`` (a checkout), else the copy
inside the wheel. The command line composes them with Hydra (cli.py), with the resolvers
registered here; a script that needs one model's spec without Hydra (``python -m
splitnet.bench.gpu``) reads it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from splitnet.errors import SplitnetError


def _conf_dir() -> Path:
    if os.environ.get("SPLITNET_CONF"):
        return Path(os.environ["SPLITNET_CONF"])
    here = Path(__file__).resolve().parent
    repo = here.parent / "conf"
    return repo if (repo / "config.yaml").is_file() else here / "conf"


CONF_DIR = _conf_dir()


def model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` as a dict (what ``load_spec`` takes)."""
    import yaml

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
        raise SplitnetError(f"model={name!r}: no {path}; valid: {known}")
    return dict(yaml.safe_load(path.read_text()))


def register_resolver() -> None:
    """Make ``${conv_stack:depth,lrn,pool,dropout,classes[,dropout_scale]}`` available to configs."""
    from omegaconf import OmegaConf

    from splitnet.model.convstack import conv_stack

    OmegaConf.register_new_resolver("conv_stack", conv_stack, replace=True)
