"""Image sources the shard writer reads: an ImageFolder tree, CIFAR binary files, arrays.

A source is random access: ``len``, ``labels`` (known up front, for a stratified split),
``key(i)`` and ``image(i)`` (decoded on demand as HxWx3 uint8 RGB, so a million-image
tree is never held in memory). ``val_mask`` is the source's own train/val split when it
has one (CIFAR's test batch, an ImageFolder with train/ and val/), else None.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from splitnet.data.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


class Source:
    """Base: subclasses set ``name``, ``classes``, ``labels``, ``val_mask`` and read images."""

    name: str
    classes: list[str]
    labels: np.ndarray
    val_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def key(self, i: int) -> str:
        return f"{i:08d}"

    def image(self, i: int) -> np.ndarray:
        raise NotImplementedError


class ArraySource(Source):
    """In-memory images (N,H,W,3) or (N,H,W) uint8 with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str] | None = None,
                 *, name: str = "arrays", val_mask: np.ndarray | None = None) -> None:
        if images.dtype != np.uint8:
            raise DataError(f"{name}: images must be uint8 (0..255), got {images.dtype}")
        if images.ndim == 3:
            # Grey images are stored as RGB so every shard set has one layout.
            images = np.repeat(images[..., None], 3, axis=-1)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"{name}: images must be (N,H,W,3) or (N,H,W), got {images.shape}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
            raise DataError(
                f"{name}: labels must be {len(images)} integers, got shape {labels.shape} "
                f"dtype {labels.dtype}"
            )
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        if len(labels) and labels.min() < 0:
            raise DataError(f"{name}: labels must be >= 0, found {int(labels.min())}")
        self.name = name
        self.images = images
        self.labels = labels.astype(np.int64)
        self.classes = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
        if n_classes > len(self.classes):
            raise DataError(f"{name}: label {n_classes - 1} but only {len(self.classes)} classes")
        self.val_mask = val_mask

    def image(self, i: int) -> np.ndarray:
        return self.images[i]


def npz_source(path: Path) -> ArraySource:
    """``.npz`` with ``images``, ``labels`` and optionally ``classes`` (strings)."""
    try:
        # allow_pickle=False: an .npz can carry pickled objects, which run code when loaded.
        with np.load(path, allow_pickle=False) as z:
            missing = {"images", "labels"} - set(z.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; found {z.files}")
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
            return ArraySource(z["images"], z["labels"], classes, name=str(path))
    except (OSError, ValueError) as exn:
        raise DataError(f"{path}: cannot read as .npz of plain arrays ({exn})") from exn


def cifar_source(directory: Path) -> ArraySource:
    """CIFAR-10 or CIFAR-100 *binary* version; the test batch becomes the val split.

    CIFAR-10: ``data_batch_{1..5}.bin``, ``test_batch.bin``, records of 1 label byte and
    3072 pixel bytes (1024 R, 1024 G, 1024 B, rows of 32). CIFAR-100: ``train.bin``,
    ``test.bin``, records of a coarse and a fine label byte, then the pixels; we keep the
    fine label (100 classes).
    """
    directory = Path(directory)
    if sorted(directory.glob("data_batch_*.bin")):
        train_files = sorted(directory.glob("data_batch_*.bin"))
        test_files = [directory / "test_batch.bin"]
        label_bytes, names_file = 1, "batches.meta.txt"
        n_classes = 10
    elif (directory / "train.bin").is_file():
        train_files, test_files = [directory / "train.bin"], [directory / "test.bin"]
        label_bytes, names_file = 2, "fine_label_names.txt"
        n_classes = 100
    else:
        raise DataError(
            f"{directory}: no CIFAR binary files (data_batch_*.bin for CIFAR-10, train.bin for "
            "CIFAR-100); use the 'binary version' archives, not the python (pickle) ones"
        )
    images, labels, is_val = [], [], []
    for path, val in [(p, False) for p in train_files] + [(p, True) for p in test_files]:
        if not path.is_file():
            continue
        raw = np.fromfile(path, dtype=np.uint8)
        record = label_bytes + 3072
        if raw.size % record:
            raise DataError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte "
                            "records")
        raw = raw.reshape(-1, record)
        labels.append(raw[:, label_bytes - 1].astype(np.int64))
        images.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        is_val.append(np.full(len(raw), val))
    names_path = directory / names_file
    classes = (
        [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
        if names_path.is_file()
        else [str(c) for c in range(n_classes)]
    )
    return ArraySource(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes,
        name=f"cifar{n_classes}:{directory}", val_mask=np.concatenate(is_val),
    )


class ImageFolderSource(Source):
    """``ROOT/<class>/<image>`` or ``ROOT/train/<class>/...`` plus ``ROOT/val/<class>/...``.

    Classes are the sorted folder names (as torchvision's ImageFolder), so ImageNet's
    wnid folders get labels 0..999 in the usual order.
    """

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a directory")
        split_layout = (root / "train").is_dir() and (root / "val").is_dir()
        train_root = root / "train" if split_layout else root
        self.classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{train_root}: no class folders (expected <class>/<image> in it)")
        index = {c: i for i, c in enumerate(self.classes)}
        paths, labels, is_val = [], [], []
        roots = [(train_root, False)] + ([(root / "val", True)] if split_layout else [])
        for split_root, val in roots:
            for folder in sorted(p for p in split_root.iterdir() if p.is_dir()):
                if folder.name not in index:
                    raise DataError(f"{folder}: class {folder.name!r} is not in {train_root}")
                for f in sorted(folder.iterdir()):
                    if f.suffix.lower() in IMAGE_SUFFIXES:
                        paths.append(f)
                        labels.append(index[folder.name])
                        is_val.append(val)
        if not paths:
            raise DataError(f"{root}: class folders hold no images ({sorted(IMAGE_SUFFIXES)})")
        self.name = f"imagefolder:{root}"
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.val_mask = np.asarray(is_val) if split_layout else None

    def key(self, i: int) -> str:
        # webdataset splits a member name at its first dot, so the key must have none.
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", self.paths[i].stem)
        return f"{i:08d}_{stem}"

    def image(self, i: int) -> np.ndarray:
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))
