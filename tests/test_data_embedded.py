"""The embedded MNIST subset: real digits, converted once into a cache, rebuilt if damaged."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from splitnet.data import build_loader, data_info
from splitnet.data.embedded import NAME, ensure_embedded, is_complete, load_mnist, mnist_csv
from splitnet.data.meta import read_meta
from splitnet.data.pipeline import decode


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    ensure_embedded(root)
    return root


def test_the_file_is_mnist_as_expected() -> None:
    images, labels = load_mnist(mnist_csv())
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images[:, 0, :].max() == 0  # dark background at the border


def test_cache_holds_the_fixed_split_as_36x36_rgb(cache) -> None:
    meta = read_meta(cache / NAME)
    assert (meta.count("train"), meta.count("val")) == (4500, 500)
    assert (meta.image_size, meta.encoding) == (36, "png")
    assert meta.classes == [str(d) for d in range(10)]
    assert len(meta.splits["val"]) == 10  # val shards for up to 10 replicas
    # The grey pixels' only colour direction is (1, 1, 1)/sqrt(3).
    assert meta.eigval[1] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(np.abs(np.asarray(meta.eigvec)[:, 0]), [3**-0.5] * 3, atol=1e-9)


def test_stored_pixels_are_the_padded_originals(cache) -> None:
    images, labels = load_mnist(mnist_csv())
    shard = cache / NAME / "val-000000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.split(".")[0] for name in members})
    assert all(int(k) % 10 == 9 for k in keys)  # every 10th image is val
    for key in keys[:5]:
        image, label = decode({"png": members[f"{key}.png"], "cls": members[f"{key}.cls"]}, 10)
        expected = np.pad(images[int(key)], 4)
        assert label == labels[int(key)]
        np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=-1))


def test_cache_is_reused_and_rebuilt_when_damaged(cache) -> None:
    directory = cache / NAME
    shard = directory / "train-000003.tar"
    before = shard.stat().st_mtime_ns
    assert ensure_embedded(cache) == directory and shard.stat().st_mtime_ns == before
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    sha = read_meta(directory).extra["source_sha256"]
    assert not is_complete(directory, sha)
    (directory / "meta.json").unlink()
    assert not is_complete(directory, sha)
    ensure_embedded(cache)
    assert is_complete(directory, sha)
    assert sorted(p.name for p in cache.iterdir()) == [f".{NAME}.lock", NAME]


def test_default_config_trains_on_digits(cache) -> None:
    cfg = {"name": "embedded", "kind": "embedded", "num_classes": 10, "flip": False,
           "normalize": "mean_std"}
    info = data_info(cfg, cache_dir=str(cache))
    assert info.counts == {"train": 4500, "val": 500}
    assert info.batches_per_epoch("train", 128, 2) == 17
    loader = build_loader(cfg, split="train", image_size=32, channels=3, batch_size=128,
                          replica=1, num_replicas=2, epoch=0, seed=0, cache_dir=str(cache))
    images, labels = next(iter(loader))
    assert images.shape == (128, 3, 32, 32) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() <= 9 and len(labels.unique()) > 5
    # mean_std: roughly zero mean and unit variance over a batch of digits.
    assert abs(images.mean().item()) < 0.3 and 0.6 < images.std().item() < 1.5
