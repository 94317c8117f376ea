"""Reading shards for training and evaluation: ``build_loader``.

One replica's pipeline, in order: the epoch's shard order (seeded by (seed, epoch), the
same on every replica) -> the shards it reads (train: all of them; val: its own) ->
``wds.WebDataset`` reads and groups tar members -> a seeded shuffle buffer of raw bytes
(train) -> one sample sequence, cut into batches by position -> per DataLoader worker
every W-th batch -> decode the image and class keys only (PIL; never pickle or any
decoder that runs code) -> augmentation with a generator per sample position -> batches.

Train: the sequence is the epoch's global one, the same for every number of replicas.
Global batch k is positions k*R*B .. (k+1)*R*B-1 and replica r's batch is its r-th
part, so the samples of step k are a function of (seed, epoch, k) alone: a job that
continues on fewer replicas (with more accumulation) trains on the same batches. With
one replica this is the replica's sequence as it always was. Every random choice is a
function of (seed, epoch, sample position), never of the rank or the number of workers,
so the ranks of a model-parallel group get identical batches (each whole, or each its
rows of them) and ``data.workers``
does not change a run; per-position generators also let a resumed epoch skip batches
without decoding them.

Decode once per replica (train): given ``part=(i, D)``, rank i of a replica's D
model-parallel ranks decodes and crops only its rows of each batch (``row_parts``) and
yields them as uint8 pixels with their colour offsets; the ranks all-gather the rows
(comm/, a data transfer of a quarter of float32's bytes) and ``finish`` them into the
batch a single rank would have decoded whole, bitwise, since every row's randomness
follows its position. ``pin_memory``: batches arrive in page-locked host memory, so
their copy to a CUDA device can run asynchronously (``splitnet.data.transfer``).
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import count, islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from splitnet.data.augment import Augmenter, eval_crops
from splitnet.data.config import DataConfig
from splitnet.data.distribute import (
    batches_per_epoch,
    epoch_order,
    eval_batches,
    replica_shards,
    role_batches,
    role_of,
    row_parts,
)
from splitnet.data.errors import BadSampleError, DataError
from splitnet.data.info import SPLITS, data_info
from splitnet.data.shardset import resolve
from splitnet.data.subset import in_subset, subset_size
from splitnet.data.synthetic import SyntheticLoader
from splitnet.model.seeding import stream_seed

log = logging.getLogger(__name__)

IMAGE_KEYS = ("png", "jpg", "jpeg")
# DataLoader workers are forked, as under torchrun, whatever started this process: a worker
# then costs no fresh torch import, and fork's semaphores are unlinked at once instead of
# being registered with the resource tracker, so a rank that is killed leaks none.
WORKER_START = "fork" if "fork" in mp.get_all_start_methods() else None
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class Malformed(Exception):
    """A sample without a readable image or class; caught, then skipped or raised."""


def shuffled(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer of ``size``: once full, each new sample swaps out a random one."""
    buffer: list[Any] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = sample
    rng.shuffle(buffer)
    yield from buffer


def decode(sample: dict[str, Any], num_classes: int) -> tuple[np.ndarray, int]:
    """Image and class of a raw webdataset sample; other members are never looked at."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise Malformed(f"no image member (.{', .'.join(IMAGE_KEYS)})")
    if "cls" not in sample:
        raise Malformed("no .cls member")
    try:
        label = int(sample["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exn:
        raise Malformed(f"class {sample['cls'][:20]!r} is not an integer") from exn
    if not 0 <= label < num_classes:
        raise Malformed(f"class {label} is outside 0..{num_classes - 1}")
    try:
        with Image.open(io.BytesIO(sample[key])) as im:
            image = np.asarray(im.convert("RGB"))
    except DECODE_ERRORS as exn:
        raise Malformed(f"undecodable .{key}: {exn}") from exn
    return image, label


class RawCache:
    """Raw samples of whole shards, kept in memory up to ``limit`` bytes of sample payload
    (``data.keep_mb``; Python's own overhead per sample comes on top).

    A small training subset (``data.fraction``) over a small set spends most of an epoch
    scanning tar members it does not use: 90 of the embedded set's 4,500 digits cost a
    0.35 s scan per epoch against 0.16 s of training steps. An entry is one shard's samples
    of one subset, valid while the shard's size and modification time are those it was read
    with: a rewritten shard is read again and its entry replaced. A shard whose tar data
    broke off is never kept (its damage is met and reported every epoch, as before).
    Samples are raw bytes and are never modified after reading. DataLoader workers are
    forked per epoch: they see what the process held when they started, and what they read
    themselves is lost with them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.entries: dict[tuple[str, float, int], tuple[tuple[int, int], list[dict[str, Any]]]] = {}

    @staticmethod
    def nbytes(samples: list[dict[str, Any]]) -> int:
        return sum(len(v) for s in samples for v in s.values() if isinstance(v, bytes | str))

    @staticmethod
    def version(shard: str) -> tuple[int, int] | None:
        try:
            stat = os.stat(shard)
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def get(self, shard: str, subset: tuple[float, int]) -> list[dict[str, Any]] | None:
        entry = self.entries.get((shard, *subset))
        if entry is None:
            return None
        if entry[0] != self.version(shard):  # rewritten since: forget it
            self.drop(shard, subset)
            return None
        return entry[1]

    def put(self, shard: str, subset: tuple[float, int], samples: list[dict[str, Any]],
            version: tuple[int, int] | None) -> None:
        """Keep ``samples``, read from ``shard`` as it was at ``version`` (its stat before reading)."""
        self.drop(shard, subset)
        size = self.nbytes(samples)
        if version is None or version != self.version(shard) or self.held + size > self.limit:
            return
        self.entries[(shard, *subset)] = (version, samples)
        self.held += size

    def drop(self, shard: str, subset: tuple[float, int]) -> None:
        entry = self.entries.pop((shard, *subset), None)
        if entry is not None:
            self.held -= self.nbytes(entry[1])

    def clear(self) -> None:
        self.entries.clear()
        self.held = 0


RAW_CACHE = RawCache(limit=64 << 20)  # build_loader sets it from data.keep_mb


@dataclass(frozen=True)
class Damage:
    """What one shard lost: samples after its tar data broke off, samples that did not
    decode, and the first reason."""

    cut: int
    undecodable: int
    reason: str

    @property
    def samples(self) -> int:
        return self.cut + self.undecodable


class ReplicaStream(IterableDataset):
    """One replica's batches for one epoch; in a DataLoader each worker serves one stream.

    The samples form one sequence: the shards in epoch order, pass after pass (train:
    every shard, each pass through a shuffle buffer seeded by (seed, epoch, pass); val:
    the replica's own shards), and the replica's batch k is positions
    (k*R + r)*B .. (k*R + r)*B + B-1 of it (val: k*B ..). Stream ``role`` (of ``roles``)
    reads the whole sequence and decodes only batches role, role + roles, ...: the batches
    are a function of (seed, epoch, replica) alone, never of the number of workers.

    Train: ``part=(i, D)`` decodes only rows ``row_parts(B, D)[i]`` of each batch, for rank i
    of a replica's D model-parallel ranks. A sample that cannot be decoded is replaced by the
    next decodable sample of its batch, wrapping around (with the augmentation of its own
    position): every batch is full, no later batch moves (a resumed epoch gets the same
    batches whatever was skipped before them), and a rank fills its rows without knowing
    which of the other ranks' rows decode, so its part is the same rows whatever D is. A bad
    sample is counted by the rank whose row it is.
    Val (``exact``): one pass, no replacement; the last batch may be partial, so every
    readable sample is scored exactly once. Items are (images, labels, role, skipped, decoded,
    damage): ``decoded`` counts the stream's decode calls, ``damage`` names each shard that
    lost samples, how many and why (``Damage``).
    """

    def __init__(self, shards: list[str], counts: dict[str, int], *, split: str,
                 augmenter: Augmenter, num_classes: int, batch_size: int, n_batches: int,
                 start: int, roles: int, shuffle_buffer: int, on_error: str, seed: int,
                 epoch: int, replica: int, num_replicas: int, subset: tuple[float, int] = (1.0, 0),
                 part: tuple[int, int] = (0, 1)) -> None:
        self.shards = shards
        self.sizes = row_parts(batch_size, part[1])
        self.own = (sum(self.sizes[:part[0]]), sum(self.sizes[:part[0] + 1]))  # rows [lo, hi) decoded here
        self.subset = subset  # (data.fraction, data.subset_seed); train only
        self.counts = counts
        self.train = split == "train"
        self.augmenter = augmenter
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.start = start
        self.roles = roles
        self.shuffle_buffer = shuffle_buffer
        self.on_error = on_error
        # Train reads the global sequence, whose seeds are those replica 0 of one had (so a
        # job on one replica keeps the batches it always had); val reads the replica's own.
        self.key = (seed, epoch, 0 if self.train else replica)
        self.replica, self.num_replicas = (replica, num_replicas) if self.train else (0, 1)
        self.skipped = 0
        self.decoded = 0
        self.broken_off: set[str] = set()
        self.cut: dict[str, int] = {}  # shard -> samples lost after its tar data became unreadable
        self.bad_keys: dict[str, set[str]] = {}  # shard -> keys of samples that did not decode
        self.reasons: dict[str, str] = {}

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        stream = self.role_stream(role_of(worker.id if worker else 0, self.roles, self.start))
        return stream if worker is None else self.handed_over(stream)

    @staticmethod
    def handed_over(stream: Iterator[Any]) -> Iterator[Any]:
        """In a worker process: pass a DataError to the main process as an item.

        DataLoader's own re-raise keeps its iterator alive in a reference cycle until a
        garbage collection, which may first happen in the next DataLoader's forked worker
        and fail there; an item lets the main process end the iteration cleanly and raise.
        """
        try:
            yield from stream
        except DataError as exn:
            yield exn

    def raw(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(shard, raw sample) for every sample of the replica's shards, in order.

        A shard read to its end without a tar error leaves its samples of the subset in the
        process's ``RawCache`` (while it has room); later passes and epochs read them from
        there: the same samples in the same order, without scanning the tar again. Reading
        runs one sample ahead of what it yields, so a stream that stops right after a
        shard's last sample (the end of an epoch) has still seen that shard end.
        """
        for shard in self.shards:
            kept = RAW_CACHE.get(shard, self.subset)
            if kept is not None:
                for sample in kept:
                    yield shard, sample
                continue
            version = RawCache.version(shard)
            # One WebDataset per shard, so a tar-level error names its shard.
            dataset = wds.WebDataset(
                [shard], shardshuffle=False, nodesplitter=None, workersplitter=None,
                empty_check=False, handler=partial(self.shard_error, shard), seed=0,
            )
            read, kept, ahead = 0, [], None
            for sample in dataset:
                read += 1
                if ahead is not None:
                    yield shard, ahead
                    ahead = None
                if in_subset(str(sample.get("__key__")), *self.subset):
                    kept.append(sample)
                    ahead = sample
            if shard in self.broken_off:
                self.cut[shard] = max(0, self.counts.get(shard, read) - read)
            else:
                RAW_CACHE.put(shard, self.subset, kept, version)
            if ahead is not None:
                yield shard, ahead

    def sequence(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The replica's sample sequence: one pass (val), or pass after pass (train).

        The shuffle buffer drains at the end of a pass, so the sequence holds every
        sample of the replica once before it holds any twice.
        """
        if not self.train:
            yield from self.raw()
            return
        for n in count():
            samples: Iterable[tuple[str, dict[str, Any]]] = self.raw()
            if self.shuffle_buffer > 1:
                rng = random.Random(stream_seed(*self.key, "shuffle", n))
                samples = shuffled(samples, self.shuffle_buffer, rng)
            seen = 0
            for item in samples:
                seen += 1
                yield item
            if seen == 0:
                raise DataError(f"no readable sample in any of the shards {self.shards}")

    def shard_error(self, shard: str, exn: Exception) -> bool:
        """webdataset's handler for unreadable tar files: skip the rest of the shard, or raise."""
        reason = exn.args[0] if exn.args else repr(exn)
        self.broken_off.add(shard)
        self.bad(shard, "the rest of the shard", f"unreadable tar data: {reason}")
        return True

    def bad(self, shard: str, what: str, reason: str, key: str | None = None) -> None:
        if self.on_error == "raise":
            raise BadSampleError(
                f"{shard}: {what}: {reason} (data.on_error=raise; "
                "data.on_error=skip skips and counts such samples)"
            )
        self.skipped += 1
        self.reasons.setdefault(shard, reason)
        if key is not None:
            self.bad_keys.setdefault(shard, set()).add(key)
        log.warning("skipping %s in %s: %s", what, shard, reason)

    def damage(self) -> dict[str, Damage]:
        return {shard: Damage(self.cut.get(shard, 0), len(self.bad_keys.get(shard, ())), reason)
                for shard, reason in self.reasons.items()}

    def role_stream(self, role: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
        skip, todo = role_batches(role, self.roles, self.n_batches, self.start)
        samples = self.sequence()
        position = 0
        # Skipping happens on raw bytes: other streams' batches and a resumed epoch's
        # first batches cost reading, not decoding.
        for k in range(role + skip * self.roles, role + (skip + todo) * self.roles, self.roles):
            first = self.first(k)
            next(islice(samples, first - position, first - position), None)
            raw = list(islice(samples, self.batch_size))
            position = first + len(raw)
            if not raw:  # val: the sequence ended (an unreadable tar held fewer samples)
                return
            batch = self.batch(k, raw)
            if batch is not None:
                yield (*batch, role, self.skipped, self.decoded, self.damage())

    def first(self, k: int) -> int:
        """The position in the sequence of the replica's batch ``k``: its part of global batch k."""
        return (k * self.num_replicas + self.replica) * self.batch_size

    def batch(self, k: int, raw: list[tuple[str, dict[str, Any]]]) -> tuple[torch.Tensor, ...] | None:
        """This stream's rows of batch ``k`` (train: its part; val: all) from the batch's raw
        samples (positions k*B ...), decoded and augmented: (images, labels), or for one part
        of several (uint8 pixels, offsets, labels) that ``Augmenter.finish`` completes after
        the ranks' gather; None for a val batch without one readable sample."""
        tried: dict[int, tuple[np.ndarray, int] | None] = {}
        lo, hi = self.own[0], min(self.own[1], len(raw))  # val: the last batch may be short

        def attempt(i: int) -> tuple[np.ndarray, int] | None:
            if i not in tried:
                shard, sample = raw[i]
                self.decoded += 1
                try:
                    tried[i] = decode(sample, self.num_classes)
                except Malformed as exn:
                    if lo <= i < hi:  # the rank whose row it is counts it (or raises)
                        key = str(sample.get("__key__"))
                        self.bad(shard, f"sample {sample.get('__key__')!r}", str(exn), key)
                    tried[i] = None
            return tried[i]

        rows: list[tuple[int, tuple[np.ndarray, int]]] = []
        for i in range(lo, hi):
            item = attempt(i)
            if item is None and self.train:  # the next decodable sample of the batch, wrapping around
                item = next((d for j in range(1, len(raw)) if (d := attempt((i + j) % len(raw))) is not None),
                            None)
                if item is None:
                    raise DataError(
                        f"batch {k} of epoch {self.key[1]}: none of its {len(raw)} samples can be decoded "
                        f"(shards {sorted({shard for shard, _ in raw})}); rewrite or remove those shards")
            if item is not None:
                rows.append((i, item))
        if not rows and not self.train:
            return None
        if not rows:  # one part of several, with no rows: a batch smaller than the replica's ranks
            size = self.augmenter.size
            pixels = torch.empty(0, 3, size, size, dtype=torch.uint8)
            return pixels, torch.empty(0, 3), torch.empty(0, dtype=torch.int64)
        crops: list[np.ndarray] = []
        offsets: list[np.ndarray] = []
        first = self.first(k)
        for i, (image, _) in rows:
            rng = np.random.default_rng(stream_seed(*self.key, "augment", first + i))
            crop, offset = self.augmenter.sample(image, rng)
            crops.append(crop)
            offsets.append(offset)
        labels = torch.tensor([label for _, (_, label) in rows], dtype=torch.int64)
        if len(self.sizes) > 1:
            return (*self.augmenter.pixels(crops, offsets), labels)
        return self.augmenter.batch(crops, offsets), labels


class ShardLoader:
    """``len()`` batches of (images, labels); ``stats`` counts skipped bad samples and decoded
    images, and ``damage`` names each shard that lost samples (``Damage``) so the loop can
    report it. ``parts``: the rows each rank of the replica decodes when this loader yields
    one rank's part of every batch, as (uint8 pixels, offsets, labels) that the ranks
    all-gather and ``finish``; else None, and it yields (images, labels)."""

    synthetic = False

    def __init__(self, stream: ReplicaStream, workers: int, pin_memory: bool = False) -> None:
        self.stream = stream
        self.workers = workers
        self.pin_memory = pin_memory
        self.parts = stream.sizes if len(stream.sizes) > 1 else None
        self.finish = stream.augmenter.finish
        self.stats: dict[str, int] = {"skipped": 0, "decoded": 0, "batches": 0}
        self.damage: dict[str, Damage] = {}

    def __len__(self) -> int:
        return self.stream.n_batches - self.stream.start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self.stats = {"skipped": 0, "decoded": 0, "batches": 0}
        self.damage = {}
        self.stream.skipped = self.stream.decoded = 0
        source: Iterable[Any] = (
            DataLoader(self.stream, batch_size=None, num_workers=self.workers, multiprocessing_context=WORKER_START,
                       pin_memory=self.pin_memory)
            if self.workers
            else self.stream
        )
        skipped_by_role: dict[int, int] = {}
        decoded_by_role: dict[int, int] = {}
        damage_by_role: dict[int, dict[str, Damage]] = {}
        failure: DataError | None = None
        for item in source:
            if isinstance(item, DataError):
                failure = item
                break
            *batch, role, skipped, decoded, damage = item
            # Each worker process counts its own skips; the latest count per stream is its total.
            skipped_by_role[role] = skipped
            decoded_by_role[role] = decoded
            self.stats["skipped"] = sum(skipped_by_role.values())
            self.stats["decoded"] = sum(decoded_by_role.values())
            damage_by_role[role] = damage
            self.damage = merged(damage_by_role.values())
            self.stats["batches"] += 1
            if self.pin_memory and not self.workers:  # DataLoader's own pin thread serves workers
                batch = [t.pin_memory() for t in batch]
            yield tuple(batch)
        if failure is not None:
            raise failure


def merged(streams: Iterable[dict[str, Damage]]) -> dict[str, Damage]:
    """One replica's damage from its streams (DataLoader workers, or model-parallel ranks): each
    stream reads every sample, so a broken-off tar loses the same samples in each, but decodes
    only its own batches (a worker) or rows (a rank)."""
    out: dict[str, Damage] = {}
    for damage in streams:
        for shard, d in damage.items():
            was = out.get(shard, Damage(0, 0, d.reason))
            out[shard] = Damage(max(was.cut, d.cut), was.undecodable + d.undecodable, was.reason)
    return out


def check_skip(skip_batches: int, n_batches: int) -> None:
    if not 0 <= skip_batches <= n_batches:
        raise DataError(f"skip_batches={skip_batches} is outside 0..{n_batches} (one epoch)")


def build_loader(data_cfg: dict[str, Any] | DataConfig, *, split: str, image_size: int,
                 channels: int, batch_size: int, replica: int, num_replicas: int, epoch: int,
                 seed: int, crops: int = 1, cache_dir: str | None = None, skip_batches: int = 0,
                 part: tuple[int, int] = (0, 1), pin_memory: bool = False) -> ShardLoader | SyntheticLoader:
    """One replica's batches of ``split`` for ``epoch``; identical on every rank of the replica.

    Images are float32 [B, C, S, S] ([B, n, C, S, S] for n > 1 crops, val only: ``crops``
    5, or 10, which gives 5 where training does not flip, see ``eval_crops``),
    labels int64 [B]. Train: replica r's batch k is the r-th part of the epoch's global
    batch k of ``num_replicas x batch_size`` samples, which depends on (seed, epoch, k)
    only; every replica yields the same ``len(loader)`` full batches, and
    ``skip_batches`` starts the epoch at that batch (resume) with the same batches after it.
    Val: the replicas' shards are disjoint and together the whole split; each replica
    scores each of its samples once, in batches of ``batch_size`` and a last partial one
    (a replica beyond the shard count gets none).

    ``part=(i, D)`` (train): rank i of the replica's D model-parallel ranks decodes only its
    rows ``row_parts(batch_size, D)[i]`` of each batch and yields them (``loader.parts`` says
    how many rows each rank holds); the ranks' parts, joined in rank order, are the batch.
    Synthetic data costs nothing to make, so its loader ignores ``part`` and yields whole
    batches (``parts`` None). ``pin_memory``: batches in page-locked memory (a CUDA device's).
    """
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_dict(data_cfg)
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {SPLITS}")
    if crops not in (1, 5, 10) or (crops > 1 and split != "val"):
        raise DataError(f"crops={crops}: use 1, or 5 or 10 for the val split's multi-crop evaluation")
    for name, value in [("image_size", image_size), ("batch_size", batch_size),
                        ("num_replicas", num_replicas), ("channels", channels)]:
        if value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")
    crops = eval_crops(crops, cfg.flip and cfg.augment)
    info = data_info(cfg, cache_dir=cache_dir)
    RAW_CACHE.limit = cfg.keep_mb << 20
    if RAW_CACHE.held > RAW_CACHE.limit:
        RAW_CACHE.clear()
    if not 0 <= replica < num_replicas:
        raise DataError(f"replica {replica} is not in 0..{num_replicas - 1}")
    if not 0 <= part[0] < part[1] or (part[1] > 1 and split != "train"):
        raise DataError(f"part={part}: (rank i, of D ranks) with 0 <= i < D; D > 1 only for the train split")
    if info.synthetic:
        n_batches = info.batches_per_epoch(split, batch_size, num_replicas)
        check_skip(skip_batches, n_batches)
        return SyntheticLoader(
            n_batches=n_batches, start=skip_batches, batch_size=batch_size, channels=channels,
            image_size=image_size, num_classes=info.num_classes, crops=crops, seed=seed,
            epoch=epoch, replica=replica, num_replicas=num_replicas, split=split, pin_memory=pin_memory,
        )
    if cfg.side is not None and cfg.side < image_size:
        raise DataError(f"data.side={cfg.side} is smaller than the {image_size}x{image_size} crop")
    if channels != 3:
        raise DataError(f"data {info.name!r} holds RGB images; the model takes {channels} channels")
    train = split == "train"
    shard_set = resolve(info.patterns[split], split)
    ordered = epoch_order(shard_set.paths, seed=seed, epoch=epoch, shuffle=train)
    mine = ordered if train else replica_shards(ordered, replica, num_replicas)
    subset = (cfg.fraction, cfg.subset_seed) if train else (1.0, 0)
    if train:
        n_batches = batches_per_epoch(subset_size(info.counts[split], cfg.fraction), batch_size, num_replicas)
    else:
        n_batches = eval_batches(sum(shard_set.counts[s] for s in mine), batch_size)
    check_skip(skip_batches, n_batches)
    augmenter = Augmenter(
        image_size, train=train and cfg.augment, crops=crops, flip=cfg.flip, pca_std=cfg.pca_std,
        side=cfg.side, mean=info.mean, std=info.std if cfg.normalize == "mean_std" else None,
        eigval=info.eigval, eigvec=info.eigvec,
    )
    # Every worker reads the replica's whole sequence, so more workers than batches is waste.
    workers = min(cfg.workers, n_batches - skip_batches)
    stream = ReplicaStream(
        mine, shard_set.counts, split=split, augmenter=augmenter, num_classes=info.num_classes,
        batch_size=batch_size, n_batches=n_batches, start=skip_batches, roles=max(1, workers),
        shuffle_buffer=cfg.shuffle_buffer, on_error=cfg.on_error, seed=seed, epoch=epoch,
        replica=replica, num_replicas=num_replicas, subset=subset, part=part,
    )
    return ShardLoader(stream, workers, pin_memory=pin_memory)
