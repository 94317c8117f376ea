"""Round trips: each source format written as shards reads back with the same pixels and labels."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from splitnet.data.errors import DataError
from splitnet.data.meta import read_meta
from splitnet.data.pipeline import decode
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ArraySource, ImageFolderSource, cifar_source, npz_source


def read_back(directory) -> dict[str, dict[str, tuple[np.ndarray, int]]]:
    """{split: {key: (image, label)}} straight from the tar files, no augmentation."""
    meta = read_meta(directory)
    out: dict[str, dict[str, tuple[np.ndarray, int]]] = {}
    for split, entries in meta.splits.items():
        urls = [str(directory / e.name) for e in entries]
        dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None,
                                 workersplitter=None, seed=0)
        out[split] = {s["__key__"]: decode(s, len(meta.classes)) for s in dataset}
    return out


def random_images(n: int, h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_npz_round_trip(tmp_path) -> None:
    images, labels = random_images(30), np.arange(30) % 3
    np.savez(tmp_path / "a.npz", images=images, labels=labels, classes=np.array(["x", "y", "z"]))
    meta = write_shard_set(npz_source(tmp_path / "a.npz"), tmp_path / "out", per_shard=7,
                           val_fraction=0.2, progress=False)
    back = read_back(tmp_path / "out")
    assert meta.classes == ["x", "y", "z"]
    assert (meta.count("train"), meta.count("val")) == (24, 6)
    assert [e.count for e in meta.splits["train"]] == [7, 7, 7, 3]
    merged = back["train"] | back["val"]
    assert sorted(merged) == [f"{i:08d}" for i in range(30)]
    for key, (image, label) in merged.items():
        np.testing.assert_array_equal(image, images[int(key)])
        assert label == labels[int(key)]
    # Stratified: 2 of the 10 members of every class held out.
    assert sorted(label for _, label in back["val"].values()) == [0, 0, 1, 1, 2, 2]


def test_npz_grey_images_become_rgb(tmp_path) -> None:
    grey = random_images(4)[..., 0]
    np.savez(tmp_path / "g.npz", images=grey, labels=np.zeros(4, dtype=np.int64))
    write_shard_set(npz_source(tmp_path / "g.npz"), tmp_path / "out", progress=False)
    for key, (image, _) in read_back(tmp_path / "out")["train"].items():
        np.testing.assert_array_equal(image, np.repeat(grey[int(key)][..., None], 3, axis=-1))


def test_npz_refuses_pickled_objects(tmp_path) -> None:
    np.savez(tmp_path / "p.npz", images=np.array([{"a": 1}], dtype=object), labels=[0])
    with pytest.raises(DataError, match="cannot read"):
        npz_source(tmp_path / "p.npz")


@pytest.mark.parametrize("fine", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_binary_round_trip(tmp_path, fine: bool) -> None:
    images = random_images(12, 32, 32)
    labels = np.arange(12) % 10
    # The binary layout: label byte(s), then the R plane, G plane, B plane, rows of 32.
    planes = images.transpose(0, 3, 1, 2).reshape(12, 3072)
    heads = [np.full((12, 1), 7, np.uint8)] if fine else []
    records = np.concatenate(heads + [labels[:, None].astype(np.uint8), planes], axis=1)
    if fine:
        records[:8].tofile(tmp_path / "train.bin")
        records[8:].tofile(tmp_path / "test.bin")
    else:
        records[:5].tofile(tmp_path / "data_batch_1.bin")
        records[5:8].tofile(tmp_path / "data_batch_2.bin")
        records[8:].tofile(tmp_path / "test_batch.bin")
        (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    source = cifar_source(tmp_path)
    meta = write_shard_set(source, tmp_path / "out", per_shard=5, progress=False)
    assert len(meta.classes) == (100 if fine else 10)
    assert fine or meta.classes[3] == "c3"
    back = read_back(tmp_path / "out")
    assert sorted(back["val"]) == [f"{i:08d}" for i in range(8, 12)]  # the test batch
    for key, (image, label) in (back["train"] | back["val"]).items():
        np.testing.assert_array_equal(image, images[int(key)])
        assert label == labels[int(key)]


def test_cifar_rejects_truncated_file(tmp_path) -> None:
    np.zeros(3073 + 5, np.uint8).tofile(tmp_path / "data_batch_1.bin")
    with pytest.raises(DataError, match="whole number of 3073-byte records"):
        cifar_source(tmp_path)
    with pytest.raises(DataError, match="no CIFAR binary files"):
        cifar_source(tmp_path / "nowhere")


def test_imagefolder_round_trip_with_train_val_layout(tmp_path) -> None:
    images = random_images(6, 9, 11)
    files = {}
    for i, image in enumerate(images):
        split, cls = ("val" if i >= 4 else "train"), ("cat" if i % 2 else "dog")
        path = tmp_path / "src" / split / cls / f"img.{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        files[i] = (image, cls)
    source = ImageFolderSource(tmp_path / "src")
    assert source.classes == ["cat", "dog"]
    meta = write_shard_set(source, tmp_path / "out", per_shard=3, progress=False)
    assert (meta.count("train"), meta.count("val"), meta.image_size) == (4, 2, None)
    back = read_back(tmp_path / "out")
    assert len(back["val"]) == 2
    for split in ("train", "val"):
        for key, (image, label) in back[split].items():
            i = int(key.rsplit("_", 1)[-1])  # the stem img.<i> became img_<i>
            np.testing.assert_array_equal(image, files[i][0])
            assert source.classes[label] == files[i][1]


def test_imagefolder_resize_and_jpeg(tmp_path) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 10:50] = 200  # the centre 40x40 is flat 200, the side strips 0
    (tmp_path / "src" / "only").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "src" / "only" / "a.png")
    (tmp_path / "src" / "only" / "broken.jpg").write_bytes(b"not a jpeg")
    meta = write_shard_set(ImageFolderSource(tmp_path / "src"), tmp_path / "out", side=20,
                           encoding="jpeg", quality=95, progress=False)
    assert (meta.image_size, meta.encoding, meta.skipped) == (20, "jpeg", 1)
    (image_back, _), = read_back(tmp_path / "out")["train"].values()
    assert image_back.shape == (20, 20, 3)
    assert np.abs(image_back[2:-2, 2:-2].astype(int) - 200).max() <= 3  # JPEG is lossy


def test_array_source_checks_inputs() -> None:
    with pytest.raises(DataError, match="uint8"):
        ArraySource(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64))
    with pytest.raises(DataError, match="labels must be 2 integers"):
        ArraySource(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64))
    with pytest.raises(DataError, match="only 2 classes"):
        ArraySource(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 5]), ["a", "b"])
