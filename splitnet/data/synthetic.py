"""``data=synthetic``: random tensors of the model's input shape. Not a dataset.

For benchmarks and for the 224x224 network on machines without ImageNet: accuracy on
it means nothing. Batch k of (seed, epoch, replica, split) is a pure function of those
numbers, so every rank of a model-parallel group draws the same batch without talking.
Train: replica r's batch k is the r-th part of global batch k (``num_replicas`` x
``batch_size`` rows drawn at once), a function of (seed, epoch, k) whatever the number of
replicas; with one replica it is the batch it always was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from splitnet.model.seeding import stream_seed

log = logging.getLogger(__name__)


def random_batch(rows: int, image_shape: Sequence[int], num_classes: int,
                 *key: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` N(0, 1) images of ``image_shape`` and uniform labels, a pure function of
    ``key`` (its ``stream_seed``): every caller names its own stream (``verify`` its step,
    the loader its seed, epoch, replica, split and batch), so no two streams share numbers."""
    gen = torch.Generator().manual_seed(stream_seed(*key))
    images = torch.randn((rows, *image_shape), generator=gen)
    labels = torch.randint(0, num_classes, (rows,), generator=gen)
    return images, labels


class SyntheticLoader:
    """Yields ``n_batches - start`` batches of N(0, 1) images and uniform labels."""

    synthetic = True

    def __init__(self, *, n_batches: int, start: int, batch_size: int, channels: int,
                 image_size: int, num_classes: int, crops: int, seed: int, epoch: int,
                 replica: int, num_replicas: int, split: str) -> None:
        self.n_batches = n_batches
        self.start = start
        train = split == "train"
        parts = num_replicas if train else 1
        self.rows = slice(replica * batch_size, (replica + 1) * batch_size) if train else slice(None)
        self.shape = (batch_size * parts, *([crops] if crops > 1 else []), channels, image_size, image_size)
        self.num_classes = num_classes
        self.key = (seed, epoch, 0 if train else replica, split)
        self.stats: dict[str, int] = {"skipped": 0, "batches": 0}
        log.info("data=synthetic: random tensors %s, not real images", self.shape)

    def __len__(self) -> int:
        return self.n_batches - self.start

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = random_batch(self.shape[0], self.shape[1:], self.num_classes, *self.key, "synthetic", k)
        return images[self.rows].contiguous(), labels[self.rows].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(self.start, self.n_batches):
            self.stats["batches"] += 1
            yield self.batch(k)
