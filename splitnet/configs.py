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


def by_number(table: Any, key: Any, field: str) -> Any:
    """``table``'s entry whose key equals ``key`` as a number, then its ``field``: a setting
    that follows another one's value, such as a sweep's budget per data share
    (``${by_number:${budget},${data.fraction},epochs}``; the key 0.1 matches '0.1' or '0.10')."""

    def number(value: Any, what: str) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SplitnetError(f"by_number: {what} {value!r} is not a number") from None

    wanted = number(key, "the key")
    if not hasattr(table, "items"):
        raise SplitnetError(f"by_number: the table is {table!r}, not a mapping of numbers to settings")
    for name, entry in table.items():
        if number(name, "the table's key") == wanted:
            if not hasattr(entry, "keys") or field not in entry:
                raise SplitnetError(f"by_number: the entry for {name} is {entry!r}, which has no {field!r}")
            return entry[field]
    raise SplitnetError(f"by_number: no entry for {key!r}; this setting is given for {', '.join(map(str, table))} only")


def register_resolver() -> None:
    """Make ``${conv_stack:depth,lrn,pool,dropout,classes[,dropout_scale]}`` and
    ``${by_number:table,key,field}`` available to configs."""
    from omegaconf import OmegaConf

    from splitnet.model.convstack import conv_stack

    OmegaConf.register_new_resolver("conv_stack", conv_stack, replace=True)
    OmegaConf.register_new_resolver("by_number", by_number, replace=True)
