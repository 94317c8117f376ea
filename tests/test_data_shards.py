"""Shard writing: atomic shards, meta.json last, per-shard counts and checksums."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from splitnet.data.errors import DataError
from splitnet.data.shards import ShardWriter, stratified_val, write_shard_set
from splitnet.data.sources import ArraySource


def source(n: int = 20) -> ArraySource:
    images = np.random.default_rng(0).integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    return ArraySource(images, np.arange(n) % 2)


class Interrupted(Exception):
    pass


class FailingSource(ArraySource):
    """Raises after ``fail_at`` images, like a run killed in the middle."""

    def __init__(self, fail_at: int) -> None:
        base = source()
        super().__init__(base.images, base.labels)
        self.fail_at, self.reads = fail_at, 0

    def image(self, i: int) -> np.ndarray:
        self.reads += 1
        if self.reads > self.fail_at:
            raise Interrupted
        return super().image(i)


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path) -> None:
    with pytest.raises(Interrupted):
        write_shard_set(FailingSource(fail_at=7), tmp_path, per_shard=3, progress=False)
    # Two finished shards, no partial file, no meta.json: readers refuse the set.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar", "train-000001.tar"]
    with pytest.raises(DataError, match="already holds a shard set"):
        write_shard_set(source(), tmp_path, per_shard=3, progress=False)
    meta = write_shard_set(source(), tmp_path, per_shard=3, overwrite=True, progress=False)
    assert meta.count("train") == 20
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "train-000006.tar"


def test_meta_records_counts_sizes_and_checksums(tmp_path) -> None:
    meta = write_shard_set(source(), tmp_path, per_shard=6, val_fraction=0.2, progress=False)
    assert [e.count for e in meta.splits["train"]] == [6, 6, 4]
    assert [e.count for e in meta.splits["val"]] == [4]
    for entry in meta.splits["train"] + meta.splits["val"]:
        data = (tmp_path / entry.name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256)


def test_rewrite_is_byte_identical(tmp_path) -> None:
    first = write_shard_set(source(), tmp_path / "a", per_shard=8, progress=False)
    second = write_shard_set(source(), tmp_path / "b", per_shard=8, progress=False)
    assert first.splits == second.splits


def test_writer_aborts_cleanly(tmp_path) -> None:
    writer = ShardWriter(tmp_path, "train", per_shard=5)
    writer.add("00000000", np.zeros((2, 2, 3), np.uint8), 0)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_stratified_val_takes_the_fraction_of_every_class() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    mask = stratified_val(labels, 0.1, seed=3)
    assert [int(mask[labels == c].sum()) for c in range(4)] == [1, 2, 3, 4]
    np.testing.assert_array_equal(mask, stratified_val(labels, 0.1, seed=3))
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        stratified_val(labels, 1.0, seed=0)


def test_bad_options_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match="samples per shard"):
        ShardWriter(tmp_path, "train", per_shard=0)
    with pytest.raises(DataError, match="encoding 'gif'"):
        ShardWriter(tmp_path, "train", per_shard=1, encoding="gif")
    with_val = ArraySource(source().images, source().labels, val_mask=np.zeros(20, bool))
    with pytest.raises(DataError, match="own val split"):
        write_shard_set(with_val, tmp_path, val_fraction=0.1, progress=False)
