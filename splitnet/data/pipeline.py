"""Reading shards for training and evaluation: ``build_loader``.

One replica's pipeline, in order: the epoch's shard order (seeded by (seed, epoch), the
same on every replica) -> this replica's shards -> per DataLoader worker a subset ->
``wds.WebDataset`` reads and groups tar members -> a seeded shuffle buffer of raw bytes
-> decode the image and class keys only (PIL; never pickle or any decoder that runs
code) -> augmentation with a generator per sample -> full batches.

Every random choice is a function of (seed, epoch, replica, worker stream, sample
index), never of the rank, so the ranks of a model-parallel group yield identical
batches; per-sample generators also let a resumed epoch skip batches without decoding.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import count, islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from splitnet.data.augment import Augmenter
from splitnet.data.config import DataConfig
from splitnet.data.distribute import batches_per_epoch, epoch_order, replica_shards, role_batches, role_of
from splitnet.data.errors import BadSampleError, DataError
from splitnet.data.info import SPLITS, data_info
from splitnet.data.shardset import resolve
from splitnet.data.subset import in_subset, subset_size
from splitnet.data.synthetic import SyntheticLoader
from splitnet.seeding import stream_seed

log = logging.getLogger(__name__)

IMAGE_KEYS = ("png", "jpg", "jpeg")
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


class ReplicaStream(IterableDataset):
    """One replica's batches for one epoch; in a DataLoader each worker serves one stream.

    Stream ``role`` (of ``roles``) reads every roles-th shard of the replica and yields
    the epoch's batches role, role + roles, ...; it wraps around its shards when they run
    out, so every stream yields its full share. Items are (images, labels, role, skipped).
    """

    def __init__(self, shards: list[str], counts: dict[str, int], *, split: str,
                 augmenter: Augmenter, num_classes: int, batch_size: int, n_batches: int,
                 start: int, roles: int, shuffle_buffer: int, on_error: str, seed: int,
                 epoch: int, replica: int, subset: tuple[float, int] = (1.0, 0)) -> None:
        self.shards = shards
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
        self.key = (seed, epoch, replica)
        self.skipped = 0

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

    def raw(self, shards: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(shard, raw sample) for every sample of ``shards``, in order."""
        for shard in shards:
            # One WebDataset per shard, so a tar-level error names its shard.
            dataset = wds.WebDataset(
                [shard], shardshuffle=False, nodesplitter=None, workersplitter=None,
                empty_check=False, handler=partial(self.shard_error, shard), seed=0,
            )
            for sample in dataset:
                if in_subset(str(sample.get("__key__")), *self.subset):
                    yield shard, sample

    def passes(self, shards: list[str], role: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Pass after pass over ``shards``, forever; each pass shuffled on its own (train).

        The buffer drains at the end of a pass, so a stream yields every sample of its
        shards once before it yields any sample twice.
        """
        for n in count():
            samples: Iterable[tuple[str, dict[str, Any]]] = self.raw(shards)
            if self.train and self.shuffle_buffer > 1:
                rng = random.Random(stream_seed(*self.key, role, "shuffle", n))
                samples = shuffled(samples, self.shuffle_buffer, rng)
            seen = 0
            for item in samples:
                seen += 1
                yield item
            if seen == 0:
                raise DataError(f"no readable sample in any of the shards {shards}")

    def shard_error(self, shard: str, exn: Exception) -> bool:
        """webdataset's handler for unreadable tar files: skip the rest of the shard, or raise."""
        reason = exn.args[0] if exn.args else repr(exn)
        self.bad(shard, "the rest of the shard", f"unreadable tar data: {reason}")
        return True

    def bad(self, shard: str, what: str, reason: str) -> None:
        if self.on_error == "raise":
            raise BadSampleError(
                f"{shard}: {what}: {reason} (data.on_error=raise; "
                "data.on_error=skip skips and counts such samples)"
            )
        self.skipped += 1
        log.warning("skipping %s in %s: %s", what, shard, reason)

    def role_stream(self, role: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
        skip, todo = role_batches(role, self.roles, self.n_batches, self.start)
        if todo == 0:
            return
        shards = self.shards[role :: self.roles]
        # Skipping happens on raw bytes: a resumed epoch pays for reading, not decoding.
        index = skip * self.batch_size
        samples = islice(self.passes(shards, role), index, None)
        # A whole pass without one good sample would otherwise loop forever.
        bad_limit = sum(self.counts[s] for s in shards)
        bad_run = 0
        crops: list[np.ndarray] = []
        offsets: list[np.ndarray] = []
        labels: list[int] = []
        for shard, sample in samples:
            rng = np.random.default_rng(stream_seed(*self.key, role, "augment", index))
            index += 1
            try:
                image, label = decode(sample, self.num_classes)
            except Malformed as exn:
                self.bad(shard, f"sample {sample.get('__key__')!r}", str(exn))
                bad_run += 1
                if bad_run > bad_limit:
                    raise DataError(f"no decodable sample in a whole pass over {shards}") from exn
                continue
            bad_run = 0
            crop, offset = self.augmenter.sample(image, rng)
            crops.append(crop)
            offsets.append(offset)
            labels.append(label)
            if len(labels) == self.batch_size:
                images = self.augmenter.batch(crops, offsets)
                yield images, torch.tensor(labels, dtype=torch.int64), role, self.skipped
                crops, offsets, labels = [], [], []
                todo -= 1
                if todo == 0:
                    return


class ShardLoader:
    """``len()`` batches of (images, labels); ``stats`` counts skipped bad samples."""

    synthetic = False

    def __init__(self, stream: ReplicaStream, workers: int) -> None:
        self.stream = stream
        self.workers = workers
        self.stats: dict[str, int] = {"skipped": 0, "batches": 0}

    def __len__(self) -> int:
        return self.stream.n_batches - self.stream.start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.stats = {"skipped": 0, "batches": 0}
        self.stream.skipped = 0
        source: Iterable[Any] = (
            DataLoader(self.stream, batch_size=None, num_workers=self.workers)
            if self.workers
            else self.stream
        )
        skipped_by_role: dict[int, int] = {}
        failure: DataError | None = None
        for item in source:
            if isinstance(item, DataError):
                failure = item
                break
            images, labels, role, skipped = item
            # Each worker process counts its own skips; the latest count per stream is its total.
            skipped_by_role[role] = skipped
            self.stats["skipped"] = sum(skipped_by_role.values())
            self.stats["batches"] += 1
            yield images, labels
        if failure is not None:
            raise failure


def build_loader(data_cfg: dict[str, Any] | DataConfig, *, split: str, image_size: int,
                 channels: int, batch_size: int, replica: int, num_replicas: int, epoch: int,
                 seed: int, crops: int = 1, cache_dir: str | None = None,
                 skip_batches: int = 0) -> ShardLoader | SyntheticLoader:
    """One replica's batches of ``split`` for ``epoch``; identical on every rank of the replica.

    Images are float32 [B, C, S, S] ([B, 10, C, S, S] when ``crops=10``, val only),
    labels int64 [B]. Every replica yields the same ``len(loader)`` full batches.
    ``skip_batches`` starts the epoch at that batch (resume) with the same batches after it.
    """
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_dict(data_cfg)
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {SPLITS}")
    if crops not in (1, 10) or (crops == 10 and split != "val"):
        raise DataError(f"crops={crops}: use 1, or 10 for the val split's ten-crop evaluation")
    for name, value in [("image_size", image_size), ("batch_size", batch_size),
                        ("num_replicas", num_replicas), ("channels", channels)]:
        if value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")
    info = data_info(cfg, cache_dir=cache_dir)
    n_batches = info.batches_per_epoch(split, batch_size, num_replicas)
    subset = (cfg.fraction, cfg.subset_seed) if split == "train" and not info.synthetic else (1.0, 0)
    if subset[0] < 1.0:
        n_batches = batches_per_epoch(subset_size(info.counts[split], subset[0]), batch_size, num_replicas)
    if not 0 <= skip_batches <= n_batches:
        raise DataError(f"skip_batches={skip_batches} is outside 0..{n_batches} (one epoch)")
    if not 0 <= replica < num_replicas:
        raise DataError(f"replica {replica} is not in 0..{num_replicas - 1}")
    if info.synthetic:
        return SyntheticLoader(
            n_batches=n_batches, start=skip_batches, batch_size=batch_size, channels=channels,
            image_size=image_size, num_classes=info.num_classes, crops=crops, seed=seed,
            epoch=epoch, replica=replica, split=split,
        )
    if cfg.side is not None and cfg.side < image_size:
        raise DataError(f"data.side={cfg.side} is smaller than the {image_size}x{image_size} crop")
    if channels != 3:
        raise DataError(f"data {info.name!r} holds RGB images; the model takes {channels} channels")
    shard_set = resolve(info.patterns[split], split)
    ordered = epoch_order(shard_set.paths, seed=seed, epoch=epoch, shuffle=split == "train")
    mine = replica_shards(ordered, replica, num_replicas)
    augmenter = Augmenter(
        image_size, train=split == "train" and cfg.augment, crops=crops, flip=cfg.flip, pca_std=cfg.pca_std,
        side=cfg.side, mean=info.mean, std=info.std if cfg.normalize == "mean_std" else None,
        eigval=info.eigval, eigvec=info.eigvec,
    )
    workers = min(cfg.workers, len(mine))
    stream = ReplicaStream(
        mine, shard_set.counts, split=split, augmenter=augmenter, num_classes=info.num_classes,
        batch_size=batch_size, n_batches=n_batches, start=skip_batches, roles=max(1, workers),
        shuffle_buffer=cfg.shuffle_buffer, on_error=cfg.on_error, seed=seed, epoch=epoch,
        replica=replica, subset=subset,
    )
    return ShardLoader(stream, workers)
