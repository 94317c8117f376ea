from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from splitnet.model.spec import ModelSpec, load_spec

CONF = Path(__file__).resolve().parent.parent / "conf"
SHIPPED = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def shipped_spec(name: str) -> ModelSpec:
    return load_spec(yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text()))


@pytest.fixture(scope="session")
def alexnet() -> ModelSpec:
    return shipped_spec("alexnet")


@pytest.fixture(scope="session")
def alexnet_small() -> ModelSpec:
    return shipped_spec("alexnet_small")
