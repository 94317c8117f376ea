"""Shard writers: any Source -> ``{split}-NNNNNN.tar`` files plus ``meta.json``.

Every shard is written under a hidden temporary name, fsynced, then renamed, and
``meta.json`` is renamed into place last: an interrupted run leaves only hidden
``.partial`` files and no meta.json, never a set that looks complete.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from splitnet.atomic import fsync_dir
from splitnet.data.augment import centre_crop, resize_shorter
from splitnet.data.errors import DataError
from splitnet.data.meta import (
    META_NAME,
    ColourStats,
    ShardEntry,
    ShardMeta,
    read_meta,
    write_meta,
)
from splitnet.data.sources import Source

log = logging.getLogger(__name__)

ENCODINGS = {"png": "png", "jpeg": "jpg"}  # encoding -> member suffix


def encode(image: np.ndarray, encoding: str, quality: int = 90) -> bytes:
    """PNG (lossless) or JPEG at ``quality``; the bytes go into the tar unchanged."""
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(image).save(buf, format="PNG")
    elif encoding == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        raise DataError(f"encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
    return buf.getvalue()


def square(image: np.ndarray, side: int) -> np.ndarray:
    """The paper's preprocessing: shorter side to ``side``, then the central side x side."""
    return centre_crop(resize_shorter(image, side), side)


class ShardWriter:
    """One split as tar shards of ``per_shard`` samples: ``KEY.png`` (or ``.jpg``), ``KEY.cls``."""

    def __init__(self, directory: Path, split: str, per_shard: int, encoding: str = "png",
                 quality: int = 90) -> None:
        if per_shard < 1:
            raise DataError(f"samples per shard must be >= 1, got {per_shard}")
        if encoding not in ENCODINGS:
            raise DataError(f"encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
        self.directory = Path(directory)
        self.split = split
        self.per_shard = per_shard
        self.encoding = encoding
        self.quality = quality
        self.entries: list[ShardEntry] = []
        self._tar: tarfile.TarFile | None = None
        self._file: io.BufferedWriter | None = None
        self._count = 0

    def _tmp_path(self) -> Path:
        return self.directory / f".{self._name()}.partial"

    def _name(self) -> str:
        return f"{self.split}-{len(self.entries):06d}.tar"

    def add(self, key: str, image: np.ndarray, label: int) -> None:
        if self._tar is None:
            self._file = open(self._tmp_path(), "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        payload = encode(image, self.encoding, self.quality)
        self._member(f"{key}.{ENCODINGS[self.encoding]}", payload)
        self._member(f"{key}.cls", str(int(label)).encode())
        self._count += 1
        if self._count == self.per_shard:
            self._finish()

    def _member(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = 0o444
        info.mtime = 0  # reproducible bytes, so a rewrite gives the same checksums
        self._tar.addfile(info, io.BytesIO(payload))

    def _finish(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        tmp, final = self._tmp_path(), self.directory / self._name()
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, final)
        self.entries.append(ShardEntry(final.name, self._count, final.stat().st_size, digest))
        self._tar, self._file, self._count = None, None, 0

    def close(self) -> list[ShardEntry]:
        """Finish the last (possibly short) shard; returns every shard written."""
        if self._tar is not None:
            self._finish()
        fsync_dir(self.directory)
        return self.entries

    def abort(self) -> None:
        """Drop the shard being written; finished shards stay but no meta.json vouches for them."""
        if self._tar is not None:
            self._file.close()
            self._tmp_path().unlink(missing_ok=True)
            self._tar, self._file = None, None


def stratified_val(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A val mask holding round(fraction * n_c) random members of every class c."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.permutation(members)[: round(fraction * len(members))]] = True
    return mask


def prepare_directory(out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("*.tar"))
    if (old or (out / META_NAME).exists()) and not overwrite:
        raise DataError(f"{out} already holds a shard set; pass --overwrite to replace it")
    # meta.json goes first, so the set stops looking complete before its shards go.
    (out / META_NAME).unlink(missing_ok=True)
    for path in old + sorted(out.glob(".*.partial")):
        path.unlink()


def write_shard_set(source: Source, out: Path, *, per_shard: int = 1000,
                    val_fraction: float | None = None, side: int | None = None,
                    encoding: str = "png", quality: int = 90, seed: int = 0,
                    overwrite: bool = False, progress: bool = True,
                    extra: dict[str, str] | None = None) -> ShardMeta:
    """Write ``source`` as train (and val) shards in ``out``; returns the meta written.

    Samples are written in a seeded random order: sources are often sorted by class,
    and a reader's shuffle buffer is far smaller than a class.
    """
    out = Path(out)
    if source.val_mask is not None:
        if val_fraction:
            raise DataError(f"{source.name} has its own val split; drop the val fraction")
        val_mask = source.val_mask
    else:
        val_mask = stratified_val(source.labels, val_fraction or 0.0, seed)
    if val_mask.all():
        raise DataError(f"{source.name}: every sample would go to val; nothing left to train on")
    prepare_directory(out, overwrite)
    rng = np.random.default_rng(seed)
    stats = ColourStats()
    sizes: set[tuple[int, ...]] = set()
    splits: dict[str, list[ShardEntry]] = {}
    skipped = 0
    for split, mask in [("train", ~val_mask), ("val", val_mask)]:
        order = rng.permutation(np.flatnonzero(mask))
        if len(order) == 0:
            continue
        writer = ShardWriter(out, split, per_shard, encoding, quality)
        try:
            for i in tqdm(order, desc=f"{split} shards", unit="img", disable=not progress):
                try:
                    image = source.image(int(i))
                except (OSError, ValueError, Image.DecompressionBombError) as exn:
                    skipped += 1
                    log.warning("skipping %s sample %s: %s", source.name, source.key(int(i)), exn)
                    continue
                if side is not None:
                    image = square(image, side)
                sizes.add(image.shape[:2])
                if split == "train":
                    stats.add(image)
                writer.add(source.key(int(i)), image, int(source.labels[i]))
            splits[split] = writer.close()
        except BaseException:
            writer.abort()
            raise
    if not sizes:
        raise DataError(f"{source.name}: no readable images ({skipped} skipped); nothing written")
    (height, width), *rest = sorted(sizes)
    meta = ShardMeta(
        classes=list(source.classes),
        splits=splits,
        image_size=height if not rest and height == width else None,
        encoding=encoding,
        source=source.name,
        skipped=skipped,
        extra=dict(extra or {}),
        **stats.result(),
    )
    write_meta(out, meta)
    return read_meta(out)
