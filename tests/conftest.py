from __future__ import annotations

import multiprocessing.process
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


@pytest.fixture
def no_workers(monkeypatch) -> list[str]:
    """Any process start (a launcher's worker, a DataLoader worker) is recorded and refused."""
    started: list[str] = []

    def refuse(process) -> None:
        started.append(process.name)
        raise AssertionError(f"a process was started: {process.name}")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    return started
