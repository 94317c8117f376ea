"""The ``data`` config group as a validated dataclass: one place for keys and defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from splitnet.data.errors import DataError

KINDS = ("embedded", "shards", "synthetic")
NORMALIZE = ("mean", "mean_std")
ON_ERROR = ("skip", "raise")


@dataclass(frozen=True)
class DataConfig:
    """Keys of ``conf/data/*.yaml``; docs/data.md explains each."""

    name: str = "embedded"
    kind: str = "embedded"  # embedded | shards | synthetic
    num_classes: int = 10
    root: str | None = None  # kind=shards: the directory holding meta.json and the shards
    train: str | None = None  # shard pattern (glob and/or {a..b}); default {root}/train-*.tar
    val: str | None = None
    cache_dir: str | None = None  # kind=embedded: where the converted shards live
    augment: bool = True  # false: training images get the evaluation's centre crop, no flip or colour noise
    flip: bool = True
    pca_std: float = 0.1  # std of the PCA colour noise alpha (paper: 0.1); 0 turns it off
    normalize: str = "mean"  # mean (the paper) or mean_std
    side: int | None = None  # rescale the shorter side to this before cropping
    shuffle_buffer: int = 1000  # samples; train only
    workers: int = 0  # DataLoader worker processes per replica (0: in the training process)
    on_error: str = "skip"  # skip | raise, for undecodable or malformed samples
    fraction: float = 1.0  # share of the training split used, a seeded subset (splitnet.data.subset)
    subset_seed: int = 0  # which subset; the same on every rank, replica and epoch
    keep_mb: int = 64  # raw samples of whole shards kept in memory between epochs, MiB per process (0: none)
    train_batches: int = 100  # kind=synthetic: batches per epoch
    val_batches: int = 10

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DataConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"unknown data config keys {unknown}; valid keys: {sorted(known)}")
        cfg = cls(**d)
        cfg.check()
        return cfg

    def check(self) -> None:
        choices = {"kind": KINDS, "normalize": NORMALIZE, "on_error": ON_ERROR}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise DataError(f"data.{key}={getattr(self, key)!r}; valid: {', '.join(valid)}")
        positive = ["num_classes", "train_batches", "val_batches"]
        for key in positive:
            if not _integer(getattr(self, key)) or getattr(self, key) < 1:
                raise DataError(f"data.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        for key in ["workers", "shuffle_buffer", "keep_mb"]:
            if not _integer(getattr(self, key)) or getattr(self, key) < 0:
                raise DataError(f"data.{key} must be an integer >= 0, got {getattr(self, key)!r}")
        for key in ["augment", "flip"]:
            if not isinstance(getattr(self, key), bool):
                raise DataError(f"data.{key}={getattr(self, key)!r} must be true or false")
        if not _number(self.pca_std) or self.pca_std < 0:
            raise DataError(f"data.pca_std must be >= 0 (a number), got {self.pca_std!r}")
        if not _number(self.fraction) or not 0 < self.fraction <= 1:
            raise DataError(f"data.fraction={self.fraction!r} must be in (0, 1]; 1 uses the whole training split")
        if not _integer(self.subset_seed) or self.subset_seed < 0:
            raise DataError(f"data.subset_seed={self.subset_seed!r} must be an integer >= 0")
        if self.side is not None and (not _integer(self.side) or self.side < 1):
            raise DataError(f"data.side must be an integer >= 1 or null, got {self.side!r}")
        if self.kind == "shards" and self.root is None and self.train is None:
            raise DataError("data.kind=shards needs data.root (the directory with meta.json)")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
