"""``meta.json``: what a shard set holds, written last beside its shards.

Readers take sample counts from here (per shard, so every replica can work out the
same number of batches per epoch without scanning tar files) and the colour
statistics that mean subtraction and PCA colour noise need (paper section 4.1).
A set without a ``meta.json`` is incomplete: the writer renames it into place only
after every shard is on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from splitnet.atomic import write_bytes_atomic
from splitnet.data.errors import DataError

FORMAT = "splitnet-shards/1"
META_NAME = "meta.json"


@dataclass(frozen=True)
class ShardEntry:
    """One tar file: its name inside the set's directory, samples, size and checksum."""

    name: str
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardMeta:
    """The contents of ``meta.json``. Colour statistics are in [0, 1] pixel units."""

    classes: list[str]
    splits: dict[str, list[ShardEntry]]
    image_size: int | None  # side of the stored square images; None when sizes vary
    encoding: str
    mean: list[float]
    std: list[float]
    eigval: list[float]  # RGB covariance eigenvalues, largest first
    eigvec: list[list[float]]  # eigvec[c][i]: channel c of eigenvector i (columns)
    source: str = ""
    skipped: int = 0  # source images that could not be read while writing
    format: str = FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    def count(self, split: str) -> int:
        return sum(e.count for e in self.splits.get(split, []))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ShardMeta:
        fields = dict(d)
        fields["splits"] = {
            split: [ShardEntry(**e) for e in entries] for split, entries in d["splits"].items()
        }
        return cls(**fields)


def write_meta(directory: Path, meta: ShardMeta) -> None:
    """Write ``meta.json`` atomically (temp name, fsync, rename)."""
    write_bytes_atomic(directory / META_NAME, json.dumps(meta.to_dict(), indent=1).encode())


def read_meta(directory: Path) -> ShardMeta:
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise DataError(
            f"{path} not found: a shard set is complete only once its meta.json is written; "
            "write shards with `splitnet shards ...`"
        )
    try:
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        return ShardMeta.from_dict(d)
    except (ValueError, TypeError, KeyError) as exn:
        raise DataError(f"{path} is not a splitnet meta.json ({exn}); rewrite the shards") from exn


class ColourStats:
    """Running per-channel mean and RGB covariance over every pixel of the training images.

    The paper (section 4.1) does PCA "on the set of RGB pixel values throughout the
    ImageNet training set"; sums in float64 keep a million images exact enough.
    """

    def __init__(self) -> None:
        self.n = 0
        self.total = np.zeros(3)
        self.outer = np.zeros((3, 3))

    def add(self, image: np.ndarray) -> None:
        x = image.reshape(-1, 3).astype(np.float64) / 255.0
        self.n += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def result(self) -> dict[str, list]:
        """mean, std, eigval (descending) and eigvec (columns) of the pixels seen."""
        if self.n == 0:
            return {"mean": [0.0] * 3, "std": [1.0] * 3, "eigval": [0.0] * 3,
                    "eigvec": np.eye(3).tolist()}
        mean = self.total / self.n
        cov = self.outer / self.n - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        # Round-off can leave a tiny negative eigenvalue for grey images (rank-1 covariance).
        eigval = np.clip(eigval[order], 0.0, None)
        return {
            "mean": mean.tolist(),
            "std": np.sqrt(np.clip(np.diag(cov), 1e-12, None)).tolist(),
            "eigval": eigval.tolist(),
            "eigvec": eigvec[:, order].tolist(),
        }
