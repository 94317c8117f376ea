"""What a data configuration provides: classes, sample counts, colour statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitnet.data.config import DataConfig
from splitnet.data.distribute import batches_per_epoch
from splitnet.data.embedded import ensure_embedded
from splitnet.data.errors import DataError
from splitnet.data.meta import read_meta
from splitnet.data.shardset import default_pattern, resolve

SPLITS = ("train", "val")


@dataclass(frozen=True)
class DataInfo:
    """A resolved data set. Colour statistics are in [0, 1] pixel units.

    ``counts`` holds the samples of every split whose shards exist; ``patterns`` the shard
    pattern of each split (empty for synthetic data, which has ``fixed_batches`` instead).
    """

    name: str
    kind: str
    num_classes: int
    classes: tuple[str, ...]
    counts: dict[str, int]
    image_size: int | None = None  # side of the stored images; None when sizes vary
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    eigval: tuple[float, ...] = (0.0, 0.0, 0.0)
    eigvec: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    patterns: dict[str, str] = field(default_factory=dict)
    fixed_batches: dict[str, int] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def batches_per_epoch(self, split: str, batch_size: int, num_replicas: int) -> int:
        """Batches every replica yields in one epoch of ``split`` (all replicas the same)."""
        if split not in SPLITS:
            raise DataError(f"split {split!r} is not one of {SPLITS}")
        if self.synthetic:
            return self.fixed_batches[split]
        if split not in self.counts:
            resolve(self.patterns[split], split)  # raises the error naming the pattern
        return batches_per_epoch(self.counts[split], batch_size, num_replicas)


def data_info(data_cfg: dict[str, Any] | DataConfig, cache_dir: str | None = None) -> DataInfo:
    """Resolve a ``data`` config: builds the embedded cache on first use, reads meta.json."""
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_dict(data_cfg)
    if cfg.kind == "synthetic":
        return DataInfo(
            name=cfg.name, kind=cfg.kind, num_classes=cfg.num_classes,
            classes=tuple(str(c) for c in range(cfg.num_classes)), counts={},
            fixed_batches={"train": cfg.train_batches, "val": cfg.val_batches},
        )
    if cfg.kind == "embedded":
        root: str | Path | None = ensure_embedded(cache_dir or cfg.cache_dir)
        patterns = {s: default_pattern(root, s) for s in SPLITS}
    else:
        root = cfg.root
        patterns = {s: getattr(cfg, s) or default_pattern(root or ".", s) for s in SPLITS}
    counts = {}
    for split in SPLITS:
        try:
            counts[split] = resolve(patterns[split], split).total
        except DataError:
            if split == "train":
                raise
    if root is None:
        root = Path(resolve(patterns["train"], "train").paths[0]).parent
    meta = read_meta(Path(root))
    if cfg.num_classes != len(meta.classes):
        raise DataError(
            f"data.num_classes={cfg.num_classes} but {root}/meta.json lists "
            f"{len(meta.classes)} classes; set data.num_classes={len(meta.classes)}"
        )
    return DataInfo(
        name=cfg.name, kind=cfg.kind, num_classes=cfg.num_classes, classes=tuple(meta.classes),
        counts=counts, image_size=meta.image_size, mean=tuple(meta.mean), std=tuple(meta.std),
        eigval=tuple(meta.eigval), eigvec=tuple(tuple(r) for r in meta.eigvec), patterns=patterns,
    )
