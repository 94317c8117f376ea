"""The data config group: shipped files are valid, bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from splitnet.data.config import DataConfig
from splitnet.data.errors import DataError

CONF = Path(__file__).resolve().parent.parent / "conf" / "data"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = DataConfig.from_dict(raw)
    assert "num_classes" in raw and cfg.name == path.stem


def test_shipped_set_includes_the_default_and_synthetic() -> None:
    assert {"embedded", "synthetic", "imagenet"} <= {p.stem for p in CONF.glob("*.yaml")}
    assert DataConfig.from_dict(yaml.safe_load((CONF / "embedded.yaml").read_text())).flip is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"kind": "lmdb"}, "data.kind='lmdb'; valid: embedded, shards, synthetic"),
        ({"on_error": "ignore"}, "data.on_error='ignore'; valid: skip, raise"),
        ({"num_classes": 0}, "data.num_classes must be an integer >= 1"),
        ({"workers": -1}, "data.workers must be an integer >= 0"),
        ({"pca_std": -0.1}, "data.pca_std must be >= 0"),
        ({"kind": "shards"}, "needs data.root"),
        ({"shuffle": True}, "unknown data config keys \\['shuffle'\\]"),
    ],
)
def test_bad_values_are_named(override: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataConfig.from_dict(override)
