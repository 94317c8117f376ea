"""meta.json: colour statistics and the file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from splitnet.data.errors import DataError
from splitnet.data.meta import ColourStats, ShardEntry, ShardMeta, read_meta, write_meta


def test_colour_stats_match_numpy_on_all_pixels() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(5 + i, 7, 3), dtype=np.uint8) for i in range(4)]
    stats = ColourStats()
    for image in images:
        stats.add(image)
    result = stats.result()
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    cov = np.cov(pixels, rowvar=False, bias=True)
    np.testing.assert_allclose(result["mean"], pixels.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(result["std"], pixels.std(axis=0), atol=1e-12)
    eigval = np.asarray(result["eigval"])
    eigvec = np.asarray(result["eigvec"])
    assert list(eigval) == sorted(eigval, reverse=True)
    # Columns are eigenvectors: cov @ v = lambda v, and together they rebuild cov.
    np.testing.assert_allclose(cov @ eigvec, eigvec * eigval, atol=1e-12)
    np.testing.assert_allclose(eigvec @ np.diag(eigval) @ eigvec.T, cov, atol=1e-12)


def test_grey_images_have_one_colour_direction() -> None:
    stats = ColourStats()
    grey = np.random.default_rng(1).integers(0, 256, size=(16, 16), dtype=np.uint8)
    stats.add(np.repeat(grey[..., None], 3, axis=-1))
    result = stats.result()
    assert result["eigval"][1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(result["eigvec"])[:, 0]), [3**-0.5] * 3)


def test_meta_round_trips(tmp_path) -> None:
    meta = ShardMeta(
        classes=["a", "b"], splits={"train": [ShardEntry("train-000000.tar", 3, 1024, "ab")]},
        image_size=8, encoding="png", mean=[0.1] * 3, std=[0.2] * 3, eigval=[0.3, 0.2, 0.1],
        eigvec=np.eye(3).tolist(),
    )
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path) == meta
    assert read_meta(tmp_path).count("train") == 3
    assert not list(tmp_path.glob(".*"))  # the temporary name is gone


def test_missing_or_foreign_meta_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="meta.json not found"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a splitnet meta.json"):
        read_meta(tmp_path)
